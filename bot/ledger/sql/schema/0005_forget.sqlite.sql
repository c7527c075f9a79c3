-- "Forget me": the audit trail stays append-only, with one change allowed: a member's name
-- replaced by an alias (forgotten-...) in its actor and details; its times, jobs, actions and
-- amounts never change, and nothing is ever deleted.

-- name: drop_audit_no_update#
DROP TRIGGER audit_no_update;

-- name: create_audit_only_forgets#
CREATE TRIGGER audit_only_forgets BEFORE UPDATE ON audit
WHEN NOT (NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.job_id IS OLD.job_id
          AND NEW.action = OLD.action AND NEW.amount_micros = OLD.amount_micros
          AND (NEW.actor = OLD.actor OR instr(NEW.actor, ':forgotten-') > 0)
          AND (NEW.detail = OLD.detail OR instr(NEW.detail, ':forgotten-') > 0))
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
