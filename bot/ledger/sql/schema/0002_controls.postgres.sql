-- Budget rows follow their jobs: when a job settles at another price than it reserved, or is
-- refunded before it was charged, the database moves the difference itself, in the same
-- statement (the server's budget first, then the global one).

-- name: create_budget_job_function#
CREATE FUNCTION budget_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE delta BIGINT := 0;
BEGIN
IF NEW.committed = 1 AND OLD.committed = 0 THEN
    delta := NEW.cost_micros - NEW.reserved_micros;
ELSIF NEW.state = 'refunded' AND OLD.state <> 'refunded' AND OLD.committed = 0 THEN
    delta := -NEW.reserved_micros;
END IF;
IF delta <> 0 THEN
    UPDATE budgets SET held_micros = held_micros + delta
     WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
    UPDATE budgets SET held_micros = held_micros + delta
     WHERE period = NEW.period AND scope = 'global';
END IF;
RETURN NULL;
END $$;

-- name: create_budget_job#
CREATE TRIGGER budget_job AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION budget_job();

-- name: create_audit_job_function#
-- Every change of a job is audited, with the actor the change names.
CREATE FUNCTION audit_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
IF TG_OP = 'INSERT' THEN
    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'reserve', NEW.reserved_micros,
            CASE WHEN NEW.guild_id IS NULL THEN '' ELSE 'guild ' || NEW.guild_id END);
    RETURN NULL;
END IF;
IF NEW.committed = 1 AND OLD.committed = 0 THEN
    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'commit', NEW.cost_micros,
            'reserved ' || NEW.reserved_micros);
END IF;
IF NEW.state <> OLD.state THEN
    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
    VALUES (NEW.updated_at, NEW.id, NEW.actor,
            CASE WHEN NEW.state <> 'refunded' THEN NEW.state
                 WHEN OLD.committed = 1 THEN 'refund_slot' ELSE 'refund' END,
            CASE WHEN NEW.state = 'refunded' AND OLD.committed = 0
                 THEN NEW.reserved_micros ELSE 0 END,
            CASE WHEN NEW.state = 'submitted' THEN COALESCE(NEW.request_id, '')
                 ELSE COALESCE(NEW.error, '') END);
END IF;
IF NEW.owner IS DISTINCT FROM OLD.owner THEN
    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'claimed', 0, COALESCE(NEW.owner, ''));
END IF;
RETURN NULL;
END $$;

-- name: create_audit_job#
CREATE TRIGGER audit_job AFTER INSERT OR UPDATE ON jobs
FOR EACH ROW EXECUTE FUNCTION audit_job();

-- name: create_audit_append_only_function#
-- The audit trail is append-only: the database itself refuses edits and deletions.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$;

-- name: create_audit_append_only#
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
FOR EACH ROW EXECUTE FUNCTION audit_append_only();
