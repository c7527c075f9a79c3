-- The first schema: jobs, the monthly budget rows, the audit trail (its key, which the two
-- dialects spell differently, is in 0001_jobs.<dialect>.sql).

-- name: create_jobs#
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    platform TEXT NOT NULL,
    user_id TEXT NOT NULL,
    guild_id TEXT,
    state TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    period TEXT NOT NULL,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    committed INTEGER NOT NULL DEFAULT 0,
    cache_key TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    reply_to TEXT NOT NULL DEFAULT '{}',
    request_id TEXT,
    resume_ref TEXT NOT NULL DEFAULT '{}',
    error TEXT
);

-- name: create_jobs_user_time#
CREATE INDEX jobs_user_time ON jobs (platform, user_id, created_at);

-- name: create_jobs_state#
CREATE INDEX jobs_state ON jobs (state);

-- name: create_budgets#
CREATE TABLE budgets (
    scope TEXT NOT NULL,
    period TEXT NOT NULL,
    cap_micros BIGINT NOT NULL,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    committed_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period)
);
