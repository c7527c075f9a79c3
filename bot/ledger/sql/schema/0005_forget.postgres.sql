-- "Forget me": the audit trail stays append-only, with one change allowed: a member's name
-- replaced by an alias (forgotten-...) in its actor and details; its times, jobs, actions and
-- amounts never change, and nothing is ever deleted.

-- name: create_audit_only_forgets_function#
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.at = OLD.at
   AND NEW.job_id IS NOT DISTINCT FROM OLD.job_id AND NEW.action = OLD.action
   AND NEW.amount_micros = OLD.amount_micros
   AND (NEW.actor = OLD.actor OR strpos(NEW.actor, ':forgotten-') > 0)
   AND (NEW.detail = OLD.detail OR strpos(NEW.detail, ':forgotten-') > 0) THEN
    RETURN NEW;
END IF;
RAISE EXCEPTION 'the audit trail is append-only';
END $$;
