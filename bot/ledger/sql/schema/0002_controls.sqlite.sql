-- Budget rows follow their jobs: when a job settles at another price than it reserved, or is
-- refunded before it was charged, the database moves the difference itself, in the same
-- statement (the server's budget first, then the global one).

-- name: create_budget_job_settled#
CREATE TRIGGER budget_job_settled AFTER UPDATE OF committed ON jobs
WHEN NEW.committed = 1 AND OLD.committed = 0 AND NEW.cost_micros <> NEW.reserved_micros
BEGIN
UPDATE budgets SET held_micros = held_micros + NEW.cost_micros - NEW.reserved_micros
 WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
UPDATE budgets SET held_micros = held_micros + NEW.cost_micros - NEW.reserved_micros
 WHERE period = NEW.period AND scope = 'global';
END;

-- name: create_budget_job_refunded#
CREATE TRIGGER budget_job_refunded AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'refunded' AND OLD.state <> 'refunded' AND OLD.committed = 0
BEGIN
UPDATE budgets SET held_micros = held_micros - NEW.reserved_micros
 WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
UPDATE budgets SET held_micros = held_micros - NEW.reserved_micros
 WHERE period = NEW.period AND scope = 'global';
END;

-- name: create_audit_job_reserved#
-- Every change of a job is audited, with the actor the change names.
CREATE TRIGGER audit_job_reserved AFTER INSERT ON jobs
BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
VALUES (NEW.updated_at, NEW.id, NEW.actor, 'reserve', NEW.reserved_micros,
        CASE WHEN NEW.guild_id IS NULL THEN '' ELSE 'guild ' || NEW.guild_id END);
END;

-- name: create_audit_job_committed#
CREATE TRIGGER audit_job_committed AFTER UPDATE OF committed ON jobs
WHEN NEW.committed = 1 AND OLD.committed = 0
BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
VALUES (NEW.updated_at, NEW.id, NEW.actor, 'commit', NEW.cost_micros,
        'reserved ' || NEW.reserved_micros);
END;

-- name: create_audit_job_state#
CREATE TRIGGER audit_job_state AFTER UPDATE OF state ON jobs
WHEN NEW.state <> OLD.state
BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
VALUES (NEW.updated_at, NEW.id, NEW.actor,
        CASE WHEN NEW.state <> 'refunded' THEN NEW.state
             WHEN OLD.committed = 1 THEN 'refund_slot' ELSE 'refund' END,
        CASE WHEN NEW.state = 'refunded' AND OLD.committed = 0
             THEN NEW.reserved_micros ELSE 0 END,
        CASE WHEN NEW.state = 'submitted' THEN COALESCE(NEW.request_id, '')
             ELSE COALESCE(NEW.error, '') END);
END;

-- name: create_audit_job_claimed#
CREATE TRIGGER audit_job_claimed AFTER UPDATE OF owner ON jobs
WHEN NEW.owner IS NOT OLD.owner
BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
VALUES (NEW.updated_at, NEW.id, NEW.actor, 'claimed', 0, COALESCE(NEW.owner, ''));
END;

-- name: create_audit_no_update#
-- The audit trail is append-only: the database itself refuses edits and deletions.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;

-- name: create_audit_no_delete#
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
