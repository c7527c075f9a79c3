"""The ledger's schema: numbered migrations, applied once and in order by every store (a dict
holds a statement that differs by dialect), and the triggers that audit every job change and
move the budget rows with it."""

from __future__ import annotations

# Each migration is a list of statements; a dict holds a statement that differs by dialect.
# Applied in order, once, inside one transaction (a lock keeps two instances from racing).
Statement = str | dict[str, str]
MIGRATIONS: list[list[Statement]] = [
    [
        """CREATE TABLE jobs (
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
        )""",
        "CREATE INDEX jobs_user_time ON jobs (platform, user_id, created_at)",
        "CREATE INDEX jobs_state ON jobs (state)",
        """CREATE TABLE budgets (
            scope TEXT NOT NULL,
            period TEXT NOT NULL,
            cap_micros BIGINT NOT NULL,
            reserved_micros BIGINT NOT NULL DEFAULT 0,
            committed_micros BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, period)
        )""",
        # The one column type the dialects spell differently; see SERIAL_KEY.
        """CREATE TABLE audit (
            id SERIAL_KEY,
            at DOUBLE PRECISION NOT NULL,
            job_id TEXT,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            amount_micros BIGINT NOT NULL DEFAULT 0,
            detail TEXT NOT NULL DEFAULT ''
        )""",
    ],
    [
        # Admins' controls: quota overrides, budget caps, blocks and pauses.
        """CREATE TABLE quota_rules (
            platform TEXT NOT NULL,
            guild_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            jobs BIGINT,
            window_hours DOUBLE PRECISION,
            PRIMARY KEY (platform, guild_id, kind, target)
        )""",
        """CREATE TABLE budget_caps (
            scope TEXT PRIMARY KEY,
            cap_micros BIGINT
        )""",
        # Bumped by every change of a quota rule: instances cache the rules until it moves.
        "CREATE TABLE rules_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO rules_version (id, version) VALUES (1, 0)",
        """CREATE TABLE blocks (
            platform TEXT NOT NULL,
            guild_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (platform, guild_id, user_id)
        )""",
        """CREATE TABLE pauses (
            scope TEXT PRIMARY KEY,
            reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_job ON audit (job_id)",
        # One index answers both questions reserving asks (jobs in flight; jobs in the window)
        # and replaces two; every index a job row has is written again at each change.
        "CREATE INDEX jobs_user_state_time ON jobs (platform, user_id, state, created_at)",
        "DROP INDEX jobs_user_time",
        "DROP INDEX jobs_state",
        # A budget row keeps one sum, reserved + committed ("held"): the cap is about it, and a
        # job settled at its reserved price then leaves the row alone. The split between
        # reserved and committed is read from the jobs when someone asks for it.
        "ALTER TABLE budgets ADD COLUMN held_micros BIGINT NOT NULL DEFAULT 0",
        "UPDATE budgets SET held_micros = reserved_micros + committed_micros",
        "ALTER TABLE budgets DROP COLUMN reserved_micros",
        "ALTER TABLE budgets DROP COLUMN committed_micros",
        # Which instance runs a job, until when: another may take it over only once it lapses.
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION",
        # Budget rows follow their jobs: when a job settles at another price than it reserved,
        # or is refunded before it was charged, the database moves the difference itself,
        # in the same statement (server's budget first, then the global one).
        {
            "sqlite": """CREATE TRIGGER budget_job_settled AFTER UPDATE OF committed ON jobs
                WHEN NEW.committed = 1 AND OLD.committed = 0
                     AND NEW.cost_micros <> NEW.reserved_micros
                BEGIN
                UPDATE budgets SET held_micros = held_micros + NEW.cost_micros - NEW.reserved_micros
                 WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
                UPDATE budgets SET held_micros = held_micros + NEW.cost_micros - NEW.reserved_micros
                 WHERE period = NEW.period AND scope = 'global';
                END""",
            "postgres": """CREATE FUNCTION budget_job() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE delta BIGINT := 0;
                BEGIN
                IF NEW.committed = 1 AND OLD.committed = 0 THEN
                    delta := NEW.cost_micros - NEW.reserved_micros;
                ELSIF NEW.state = 'refunded' AND OLD.state <> 'refunded'
                      AND OLD.committed = 0 THEN
                    delta := -NEW.reserved_micros;
                END IF;
                IF delta <> 0 THEN
                    UPDATE budgets SET held_micros = held_micros + delta
                     WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
                    UPDATE budgets SET held_micros = held_micros + delta
                     WHERE period = NEW.period AND scope = 'global';
                END IF;
                RETURN NULL;
                END $$""",
        },
        {
            "sqlite": """CREATE TRIGGER budget_job_refunded AFTER UPDATE OF state ON jobs
                WHEN NEW.state = 'refunded' AND OLD.state <> 'refunded' AND OLD.committed = 0
                BEGIN
                UPDATE budgets SET held_micros = held_micros - NEW.reserved_micros
                 WHERE period = NEW.period AND scope = NEW.platform || ':' || NEW.guild_id;
                UPDATE budgets SET held_micros = held_micros - NEW.reserved_micros
                 WHERE period = NEW.period AND scope = 'global';
                END""",
            "postgres": """CREATE TRIGGER budget_job AFTER UPDATE ON jobs
                FOR EACH ROW EXECUTE FUNCTION budget_job()""",
        },
        # Every change of a job is audited by the database itself, with the actor the change
        # names: code cannot forget an entry, and an entry cannot miss its change.
        "ALTER TABLE jobs ADD COLUMN actor TEXT NOT NULL DEFAULT 'system'",
        {
            "sqlite": """CREATE TRIGGER audit_job_reserved AFTER INSERT ON jobs
                BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                VALUES (NEW.updated_at, NEW.id, NEW.actor, 'reserve', NEW.reserved_micros,
                        CASE WHEN NEW.guild_id IS NULL THEN '' ELSE 'guild ' || NEW.guild_id END);
                END""",
            "postgres": """CREATE FUNCTION audit_job() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                IF TG_OP = 'INSERT' THEN
                    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'reserve', NEW.reserved_micros,
                            CASE WHEN NEW.guild_id IS NULL THEN ''
                                 ELSE 'guild ' || NEW.guild_id END);
                    RETURN NULL;
                END IF;
                IF NEW.committed = 1 AND OLD.committed = 0 THEN
                    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'commit', NEW.cost_micros,
                            'reserved ' || NEW.reserved_micros);
                END IF;
                IF NEW.state <> OLD.state THEN
                    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                    VALUES (NEW.updated_at, NEW.id, NEW.actor,
                            CASE WHEN NEW.state <> 'refunded' THEN NEW.state
                                 WHEN OLD.committed = 1 THEN 'refund_slot' ELSE 'refund' END,
                            CASE WHEN NEW.state = 'refunded' AND OLD.committed = 0
                                 THEN NEW.reserved_micros ELSE 0 END,
                            CASE WHEN NEW.state = 'submitted' THEN COALESCE(NEW.request_id, '')
                                 ELSE COALESCE(NEW.error, '') END);
                END IF;
                IF NEW.owner IS DISTINCT FROM OLD.owner THEN
                    INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                    VALUES (NEW.updated_at, NEW.id, NEW.actor, 'claimed', 0,
                            COALESCE(NEW.owner, ''));
                END IF;
                RETURN NULL;
                END $$""",
        },
        {
            "sqlite": """CREATE TRIGGER audit_job_committed AFTER UPDATE OF committed ON jobs
                WHEN NEW.committed = 1 AND OLD.committed = 0
                BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                VALUES (NEW.updated_at, NEW.id, NEW.actor, 'commit', NEW.cost_micros,
                        'reserved ' || NEW.reserved_micros);
                END""",
            "postgres": """CREATE TRIGGER audit_job AFTER INSERT OR UPDATE ON jobs
                FOR EACH ROW EXECUTE FUNCTION audit_job()""",
        },
        {
            "sqlite": """CREATE TRIGGER audit_job_state AFTER UPDATE OF state ON jobs
                WHEN NEW.state <> OLD.state
                BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                VALUES (NEW.updated_at, NEW.id, NEW.actor,
                        CASE WHEN NEW.state <> 'refunded' THEN NEW.state
                             WHEN OLD.committed = 1 THEN 'refund_slot' ELSE 'refund' END,
                        CASE WHEN NEW.state = 'refunded' AND OLD.committed = 0
                             THEN NEW.reserved_micros ELSE 0 END,
                        CASE WHEN NEW.state = 'submitted' THEN COALESCE(NEW.request_id, '')
                             ELSE COALESCE(NEW.error, '') END);
                END""",
            "postgres": "",
        },
        {
            "sqlite": """CREATE TRIGGER audit_job_claimed AFTER UPDATE OF owner ON jobs
                WHEN NEW.owner IS NOT OLD.owner
                BEGIN INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)
                VALUES (NEW.updated_at, NEW.id, NEW.actor, 'claimed', 0,
                        COALESCE(NEW.owner, ''));
                END""",
            "postgres": "",
        },
        # The audit trail is append-only: the database itself refuses edits and deletions.
        {
            "sqlite": """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
            "postgres": """CREATE FUNCTION audit_append_only() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
        },
        {
            "sqlite": """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
            "postgres": """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
                FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
        },
    ],
    [
        # Where jobs may start, per server: no row for a server means every channel.
        """CREATE TABLE channel_rules (
            platform TEXT NOT NULL,
            guild_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            PRIMARY KEY (platform, guild_id, channel_id)
        )""",
    ],
]

# An auto-numbered primary key, as each dialect writes it.
SERIAL_KEY = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgres": "BIGSERIAL PRIMARY KEY"}

# A budget row always exists, so a server's spend is counted even before it has a cap;
# "no cap" is stored as this many micros.
NO_CAP = 2**62


def sql_for(statement: Statement, dialect: str) -> str:
    """A migration statement as `dialect` writes it."""
    sql = statement if isinstance(statement, str) else statement[dialect]
    return sql.replace("SERIAL_KEY", SERIAL_KEY[dialect])
