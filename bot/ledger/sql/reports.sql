-- What admins, /metrics and the command line read.

-- name: jobs_in_state(state)
SELECT * FROM jobs WHERE state = :state ORDER BY created_at;

-- name: usage(period, platform, guild_id)
-- Jobs and spend per user and month; a filter left NULL matches every row.
SELECT period, platform, guild_id, user_id, count(*) AS jobs,
       CAST(sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS BIGINT) AS delivered,
       CAST(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,
       CAST(sum(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS refunded,
       CAST(sum(cost_micros) AS BIGINT) AS cost
  FROM jobs
 WHERE (CAST(:period AS TEXT) IS NULL OR period = :period)
   AND (CAST(:platform AS TEXT) IS NULL OR platform = :platform)
   AND (CAST(:guild_id AS TEXT) IS NULL OR guild_id = :guild_id)
 GROUP BY period, platform, guild_id, user_id
 ORDER BY period DESC, cost DESC, jobs DESC, user_id;

-- name: audit_of_job(job_id)
SELECT * FROM audit WHERE job_id = :job_id ORDER BY id;

-- name: latest_audit(limit)
SELECT * FROM audit ORDER BY id DESC LIMIT :limit;

-- name: budget_sums(period, platform, guild_id)^
-- What a month's jobs have reserved and been charged, for one server or (NULL) all of them.
SELECT CAST(COALESCE(sum(CASE WHEN committed = 0 AND state <> 'refunded'
                              THEN reserved_micros ELSE 0 END), 0) AS BIGINT) AS reserved,
       CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) AS committed
  FROM jobs
 WHERE period = :period
   AND (CAST(:platform AS TEXT) IS NULL OR platform = :platform)
   AND (CAST(:guild_id AS TEXT) IS NULL OR guild_id = :guild_id);

-- name: jobs_of_user(platform, user_id, guild_id, limit, offset)
-- A member's jobs, newest first (a page of them); guild_id NULL: wherever they were made.
SELECT * FROM jobs
 WHERE platform = :platform AND user_id = :user_id
   AND (CAST(:guild_id AS TEXT) IS NULL OR guild_id = :guild_id)
 ORDER BY created_at DESC, id DESC
 LIMIT :limit OFFSET :offset;

-- name: count_jobs_of_user(platform, user_id, guild_id)^
SELECT count(*) AS jobs FROM jobs
 WHERE platform = :platform AND user_id = :user_id
   AND (CAST(:guild_id AS TEXT) IS NULL OR guild_id = :guild_id);
