-- What every part of the ledger shares: the schema's version, the audit trail, budget caps.
-- Parameters are named (:name); a list of job states is written out where it is used, and
-- tests/test_ledger.py checks each against the states bot/ledger/rows.py names.

-- name: create_schema_version#
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

-- name: schema_version()^
SELECT max(version) AS version FROM schema_version;

-- name: record_schema_version(version)!
INSERT INTO schema_version (version) VALUES (:version);

-- name: ping()$
SELECT 1;

-- name: audit(at, job_id, actor, action, amount, detail)!
-- An entry that no job change writes by trigger (admins' controls, notes about a job).
INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
VALUES (:at, :job_id, :actor, :action, :amount, :detail);

-- name: budget_cap(scope)^
SELECT cap_micros FROM budget_caps WHERE scope = :scope;

-- name: budget_row(scope, period)^
SELECT cap_micros, held_micros FROM budgets WHERE scope = :scope AND period = :period;
