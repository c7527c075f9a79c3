-- Admins' controls (quota overrides, budget caps, blocks, pauses), one sum per budget row,
-- job owners and leases, and the actor of every change. The triggers that move budget rows
-- with their jobs and audit every change are in 0002_controls.<dialect>.sql; they run after
-- these statements.

-- name: create_quota_rules#
CREATE TABLE quota_rules (
    platform TEXT NOT NULL,
    guild_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    jobs BIGINT,
    window_hours DOUBLE PRECISION,
    PRIMARY KEY (platform, guild_id, kind, target)
);

-- name: create_budget_caps#
CREATE TABLE budget_caps (
    scope TEXT PRIMARY KEY,
    cap_micros BIGINT
);

-- name: create_rules_version#
-- Bumped by every change of a quota rule: instances cache the rules until it moves.
CREATE TABLE rules_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);

-- name: first_rules_version#
INSERT INTO rules_version (id, version) VALUES (1, 0);

-- name: create_blocks#
CREATE TABLE blocks (
    platform TEXT NOT NULL,
    guild_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (platform, guild_id, user_id)
);

-- name: create_pauses#
CREATE TABLE pauses (
    scope TEXT PRIMARY KEY,
    reason TEXT NOT NULL DEFAULT ''
);

-- name: create_audit_job#
CREATE INDEX audit_job ON audit (job_id);

-- name: create_jobs_user_state_time#
-- One index answers both questions reserving asks (jobs in flight; jobs in the window) and
-- replaces two; every index a job row has is written again at each change.
CREATE INDEX jobs_user_state_time ON jobs (platform, user_id, state, created_at);

-- name: drop_jobs_user_time#
DROP INDEX jobs_user_time;

-- name: drop_jobs_state#
DROP INDEX jobs_state;

-- name: add_budgets_held#
-- A budget row keeps one sum, reserved + committed ("held"): the cap is about it, and a job
-- settled at its reserved price then leaves the row alone. The split between reserved and
-- committed is read from the jobs when someone asks for it.
ALTER TABLE budgets ADD COLUMN held_micros BIGINT NOT NULL DEFAULT 0;

-- name: fill_budgets_held#
UPDATE budgets SET held_micros = reserved_micros + committed_micros;

-- name: drop_budgets_reserved#
ALTER TABLE budgets DROP COLUMN reserved_micros;

-- name: drop_budgets_committed#
ALTER TABLE budgets DROP COLUMN committed_micros;

-- name: add_jobs_owner#
-- Which instance runs a job, until when: another may take it over only once it lapses.
ALTER TABLE jobs ADD COLUMN owner TEXT;

-- name: add_jobs_lease#
ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;

-- name: add_jobs_actor#
-- Every change of a job is audited by the database itself, with the actor the change names:
-- code cannot forget an entry, and an entry cannot miss its change.
ALTER TABLE jobs ADD COLUMN actor TEXT NOT NULL DEFAULT 'system';
