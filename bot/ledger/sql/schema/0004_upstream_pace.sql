-- name: create_upstream_pace#
-- When the next call to Segmind may go, for every instance on this database: the account's
-- rate limit is one for all of them (SEGMIND_CALLS_PER_MINUTE).
CREATE TABLE upstream_pace (id INTEGER PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL);

-- name: first_upstream_pace#
INSERT INTO upstream_pace (id, next_at) VALUES (1, 0);
