-- The job ledger: reserving (quota, cooldown, budgets), owning jobs (leases, takeovers) and
-- moving them through their states. Every change of a job names its owner and the states it
-- may leave, so a process that lost a job changes nothing.

-- name: job(id)^
SELECT * FROM jobs WHERE id = :id;

-- name: job_by_idempotency_key(key)^
SELECT * FROM jobs WHERE idempotency_key = :key;

-- name: insert_job(id, key, platform, user_id, guild_id, now, period, price, cache_key, params, reply_to, owner, lease_until, actor)<!
INSERT INTO jobs (id, idempotency_key, platform, user_id, guild_id, state, created_at,
                  updated_at, period, reserved_micros, cache_key, params, reply_to, owner,
                  lease_until, actor)
VALUES (:id, :key, :platform, :user_id, :guild_id, 'queued', :now, :now, :period, :price,
        :cache_key, :params, :reply_to, :owner, :lease_until, :actor)
RETURNING *;

-- name: rules_version()^
SELECT version FROM rules_version WHERE id = 1;

-- name: quota_rules()
SELECT * FROM quota_rules;

-- name: reserve_context(global_scope, guild_scope, platform, user_id, guild_id, window_start, cooldown_start)^
-- What reserving decides on, in one query: pauses, blocks, the user's jobs in flight (the
-- unfinished states), in the window and in the cooldown (the counted states), and the caps.
SELECT
  (SELECT reason FROM pauses WHERE scope IN (:global_scope, :guild_scope) LIMIT 1) AS paused,
  (SELECT count(*) FROM blocks
    WHERE platform = :platform AND user_id = :user_id AND guild_id IN (:guild_id, '')
  ) AS blocked,
  (SELECT count(*) FROM jobs
    WHERE platform = :platform AND user_id = :user_id
      AND state IN ('queued', 'submitting', 'submitted', 'rendering')
  ) AS in_flight,
  (SELECT count(*) FROM jobs
    WHERE platform = :platform AND user_id = :user_id
      AND state IN ('queued', 'submitting', 'submitted', 'rendering', 'delivered', 'held')
      AND created_at > :window_start
  ) AS recent,
  (SELECT max(created_at) FROM jobs
    WHERE platform = :platform AND user_id = :user_id
      AND state IN ('queued', 'submitting', 'submitted', 'rendering', 'delivered', 'held')
      AND created_at > :cooldown_start
  ) AS latest,
  (SELECT count(*) FROM budget_caps WHERE scope = :guild_scope) AS guild_cap_set,
  (SELECT cap_micros FROM budget_caps WHERE scope = :guild_scope) AS guild_cap,
  (SELECT cap_micros FROM budget_caps WHERE scope = :global_scope) AS global_cap,
  (SELECT version FROM rules_version WHERE id = 1) AS rules_version;

-- name: nth_counted_job(platform, user_id, window_start, offset)^
-- The job whose leaving the window frees a slot: the oldest that keeps the user at the limit.
SELECT created_at FROM jobs
 WHERE platform = :platform AND user_id = :user_id
   AND state IN ('queued', 'submitting', 'submitted', 'rendering', 'delivered', 'held')
   AND created_at > :window_start
 ORDER BY created_at LIMIT 1 OFFSET :offset;

-- name: hold_budget(scope, period, cap, amount)<!
-- Reserve :amount on a budget row only where what it holds stays within its cap; the
-- database applies this to the row one writer at a time. No row back: refused.
INSERT INTO budgets (scope, period, cap_micros, held_micros)
VALUES (:scope, :period, :cap, :amount)
ON CONFLICT (scope, period) DO UPDATE
   SET cap_micros = excluded.cap_micros, held_micros = budgets.held_micros + excluded.held_micros
 WHERE budgets.held_micros + excluded.held_micros <= excluded.cap_micros
RETURNING scope;

-- name: hold_budgets(first, first_cap, second, second_cap, period, amount)<!
-- hold_budget on two rows in one statement (one round trip on the path every job takes),
-- applied in the order given: the server's budget, then the global one. A scope missing
-- from what comes back refused.
INSERT INTO budgets (scope, period, cap_micros, held_micros)
VALUES (:first, :period, :first_cap, :amount), (:second, :period, :second_cap, :amount)
ON CONFLICT (scope, period) DO UPDATE
   SET cap_micros = excluded.cap_micros, held_micros = budgets.held_micros + excluded.held_micros
 WHERE budgets.held_micros + excluded.held_micros <= excluded.cap_micros
RETURNING scope;

-- name: renew_lease(id, owner, lease_until)<!
UPDATE jobs SET lease_until = :lease_until
 WHERE id = :id AND owner = :owner
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: release_lease(id, owner)!
UPDATE jobs SET lease_until = 0 WHERE id = :id AND owner = :owner;

-- name: orphans(now)
-- Unfinished jobs whose process stopped renewing their lease.
SELECT id, platform FROM jobs
 WHERE state IN ('queued', 'submitting', 'submitted', 'rendering')
   AND COALESCE(lease_until, 0) < :now
 ORDER BY created_at;

-- name: claim_job(id, owner, lease_until, now)<!
UPDATE jobs SET owner = :owner, lease_until = :lease_until, updated_at = :now, actor = 'system'
 WHERE id = :id AND COALESCE(lease_until, 0) < :now
RETURNING *;

-- name: mark_submitting(id, owner, now)<!
-- Written just before the POST: from here on the job may be billed.
UPDATE jobs SET state = 'submitting', updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner AND state = 'queued'
RETURNING id;

-- name: mark_submitted(id, owner, now, request_id, resume_ref)<!
UPDATE jobs SET state = 'submitted', request_id = :request_id, resume_ref = :resume_ref,
                updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner AND state IN ('queued', 'submitting')
RETURNING id;

-- name: set_state(id, owner, now, state)<!
UPDATE jobs SET state = :state, updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: commit_job(id, owner, now, cost)<!
-- The charge-once rule: a second commit, or one racing a refund, finds nothing to change.
-- reserved_micros stays on the job as its history.
UPDATE jobs SET cost_micros = :cost, committed = 1, updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner AND committed = 0
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: finish_job(id, owner, now, state, error)<!
UPDATE jobs SET state = :state, error = :error, updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: hold_job(id, owner, now, reason)<!
-- A submit that may have been billed: its price stays held for an admin to settle.
UPDATE jobs SET state = 'held', error = :reason, updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner AND committed = 0
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: refund_job(id, owner, now, reason)<!
-- Release an uncharged job's reservation and quota slot (its budget rows follow by trigger).
UPDATE jobs SET state = 'refunded', error = :reason, updated_at = :now, actor = 'system'
 WHERE id = :id AND owner = :owner AND committed = 0
   AND state IN ('queued', 'submitting', 'submitted', 'rendering')
RETURNING id;

-- name: take_upstream_slot(now, spacing)<!
-- The next free moment for a call to Segmind, taken: calls from every instance are spaced
-- by :spacing seconds, in the order they ask (one row, one writer at a time).
UPDATE upstream_pace
   SET next_at = CASE WHEN next_at > :now THEN next_at ELSE :now END + :spacing
 WHERE id = 1
RETURNING next_at - :spacing AS slot;
