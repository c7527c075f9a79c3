-- What admins change: refunds, quota rules, budget caps, blocks, pauses and channels. The job
-- changes are audited by trigger; the rest by the audit query in base.sql.

-- name: admin_release(id, actor, now, reason)<!
-- Release a settled job's reservation, one never charged (not one still running).
UPDATE jobs SET state = 'refunded', error = :reason, updated_at = :now, actor = :actor
 WHERE id = :id AND committed = 0
   AND state NOT IN ('refunded', 'queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: admin_release_slot(id, actor, now, reason)<!
-- Segmind billed it: the money stays spent, the user gets the quota slot back.
UPDATE jobs SET state = 'refunded', error = :reason, updated_at = :now, actor = :actor
 WHERE id = :id
   AND state NOT IN ('refunded', 'queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: set_quota_rule(platform, guild_id, kind, target, jobs, window_hours)!
INSERT INTO quota_rules (platform, guild_id, kind, target, jobs, window_hours)
VALUES (:platform, :guild_id, :kind, :target, :jobs, :window_hours)
ON CONFLICT (platform, guild_id, kind, target)
DO UPDATE SET jobs = excluded.jobs, window_hours = excluded.window_hours;

-- name: clear_quota_rule(platform, guild_id, kind, target)!
DELETE FROM quota_rules
 WHERE platform = :platform AND guild_id = :guild_id AND kind = :kind AND target = :target;

-- name: bump_rules_version()!
-- Every instance reloads its cached rules when this moves.
UPDATE rules_version SET version = version + 1 WHERE id = 1;

-- name: set_budget_cap(scope, cap)!
INSERT INTO budget_caps (scope, cap_micros) VALUES (:scope, :cap)
ON CONFLICT (scope) DO UPDATE SET cap_micros = excluded.cap_micros;

-- name: set_month_cap(scope, period, cap)!
-- This month's row follows at once; lowering a cap never cancels what is reserved.
UPDATE budgets SET cap_micros = :cap WHERE scope = :scope AND period = :period;

-- name: block(platform, guild_id, user_id, reason)!
INSERT INTO blocks (platform, guild_id, user_id, reason)
VALUES (:platform, :guild_id, :user_id, :reason)
ON CONFLICT (platform, guild_id, user_id) DO UPDATE SET reason = excluded.reason;

-- name: unblock(platform, guild_id, user_id)!
DELETE FROM blocks WHERE platform = :platform AND guild_id = :guild_id AND user_id = :user_id;

-- name: allow_channel(platform, guild_id, channel_id)!
INSERT INTO channel_rules (platform, guild_id, channel_id)
VALUES (:platform, :guild_id, :channel_id)
ON CONFLICT (platform, guild_id, channel_id) DO NOTHING;

-- name: disallow_channel(platform, guild_id, channel_id)!
DELETE FROM channel_rules
 WHERE platform = :platform AND guild_id = :guild_id AND channel_id = :channel_id;

-- name: allowed_channels(platform, guild_id)
SELECT channel_id FROM channel_rules
 WHERE platform = :platform AND guild_id = :guild_id
 ORDER BY channel_id;

-- name: set_private_mode(platform, guild_id, mode)!
INSERT INTO private_delivery (platform, guild_id, mode)
VALUES (:platform, :guild_id, :mode)
ON CONFLICT (platform, guild_id) DO UPDATE SET mode = excluded.mode;

-- name: clear_private_mode(platform, guild_id)!
DELETE FROM private_delivery WHERE platform = :platform AND guild_id = :guild_id;

-- name: private_mode(platform, guild_id)
SELECT mode FROM private_delivery WHERE platform = :platform AND guild_id = :guild_id;

-- name: pause(scope, reason)!
INSERT INTO pauses (scope, reason) VALUES (:scope, :reason)
ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason;

-- name: resume(scope)!
DELETE FROM pauses WHERE scope = :scope;

-- name: states_of_user(platform, user_id, guild_id)
-- guild_id NULL: wherever they were made (the member's own forget me); else one server's.
SELECT id, state FROM jobs
 WHERE platform = :platform AND user_id = :user_id
   AND (CAST(:guild_id AS TEXT) IS NULL OR guild_id = :guild_id);

-- name: forget_job(id, platform, alias)!
-- "Forget me": the job keeps its money (state, price, cost, month, server) under an alias;
-- what was asked for, where it went, and how to resume it are cleared.
UPDATE jobs SET user_id = :alias, actor = :platform || ':' || :alias, params = '{}',
       reply_to = '{}', resume_ref = '{}', error = NULL
 WHERE id = :id;

-- name: forget_audit(actor, alias, everywhere)!
-- The member's name in the audit trail, as actor and in details (a block names whom); one
-- server's forget leaves their entries about other servers' jobs alone.
UPDATE audit SET actor = CASE WHEN actor = :actor THEN :alias ELSE actor END,
                 detail = REPLACE(detail, :actor, :alias)
 WHERE (actor = :actor OR REPLACE(detail, :actor, '') <> detail)
   AND (:everywhere = 1 OR job_id IS NULL);

-- name: forget_audit_of_job(job_id, actor, alias)!
UPDATE audit SET actor = CASE WHEN actor = :actor THEN :alias ELSE actor END,
                 detail = REPLACE(detail, :actor, :alias)
 WHERE job_id = :job_id AND (actor = :actor OR REPLACE(detail, :actor, '') <> detail);
