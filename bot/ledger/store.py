"""The ledger's rules in SQL, one implementation for every store.

A store (SQLite, PostgreSQL) gives a `Database`: it runs a function in one transaction on a
thread of its own, with SQL written once in `?` style. Everything that decides money or quota
happens inside that one transaction, so the rules hold whatever the concurrency, between
coroutines, threads or processes: a user's reservations are serialised by a lock on the user,
and money moves only through conditional UPDATEs of a budget row
(`reserved + committed + price <= cap`), which the database applies one at a time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from ..errors import (
    BudgetExhausted,
    CoolingDown,
    InputError,
    JobInFlight,
    JobsPaused,
    LedgerTimeout,
    QuotaExceeded,
    UserBlocked,
)
from ..models import JobState, Requester
from ..ports import (
    RULE_KINDS,
    AuditEntry,
    Budget,
    JobRecord,
    NewJob,
    QuotaRule,
    QuotaStatus,
    UsageRow,
)
from .policy import GLOBAL_SCOPE, Limit, QuotaPolicy, guild_scope, month_of

T = TypeVar("T")

# Jobs in these states hold a quota slot; failed and refunded ones give it back. A held job
# keeps its slot (and its price) until an admin settles it.
COUNTED = ("queued", "submitting", "submitted", "rendering", "delivered", "held")
UNFINISHED = ("queued", "submitting", "submitted", "rendering")

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


class Tx(Protocol):
    """One open transaction. Rows are read by column name."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

    def lock(self, key: str) -> None:
        """Hold `key` until the transaction ends (serialises one user's reservations)."""
        ...


class Database(Protocol):
    dialect: str  # "sqlite" | "postgres"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(tx, *args) in one transaction on the database's own thread(s)."""
        ...

    async def statement(self, sql: str, args: Sequence[Any] = ()) -> list:
        """Run one statement, atomic by itself; returns its rows (RETURNING), if any."""
        ...


class SqlLedger:
    """The Ledger of bot.ports on any Database."""

    def __init__(
        self,
        database: Database,
        policy: QuotaPolicy,
        clock: Callable[[], float] = time.time,
        lease_s: float = 30.0,
        timeout_s: float = 30.0,
    ):
        self.database = database
        self.timeout_s = timeout_s  # no ledger call waits longer: a stuck disk is an answer too
        self._policy = policy
        self._clock = clock
        # This process's name on the jobs it runs; it renews their leases while it lives.
        self.owner = secrets.token_hex(6)
        self.lease_s = lease_s
        self._rules_cache: tuple[int, list[QuotaRule]] = (-1, [])  # (version, every rule)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(tx, *args) in one transaction, within the ledger's time bound."""
        return await self._bounded(self.database.run(fn, *args))

    async def _statement(self, sql: str, args: Sequence[Any] = ()) -> list:
        return await self._bounded(self.database.statement(sql, args))

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError:
            raise LedgerTimeout() from None

    async def open(self) -> None:
        await self.database.open()
        await self._run(self._migrate)

    async def close(self) -> None:
        await self.database.close()

    def _migrate(self, tx: Tx) -> None:
        tx.lock("schema")
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = tx.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"] or 0
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                sql = sql_for(statement, self.database.dialect)
                if sql:
                    tx.execute(sql)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def _audit(self, tx: Tx, job_id, actor, action, amount=0, detail="") -> None:
        tx.execute(
            "INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), job_id, actor, action, amount, detail),
        )

    # -- reserving ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        """The database answers (for /readyz)."""
        try:
            await self._statement("SELECT 1")
        except Exception:  # any failure means not ready; /readyz says so
            return False
        return True

    async def admit(self, requester: Requester) -> None:
        await self._run(self._admit, requester)

    def _admit(self, tx: Tx, who: Requester) -> None:
        _refuse_if_barred(self._context(tx, who, self._clock(), 0.0))

    async def reserve(self, job: NewJob) -> JobRecord:
        return await self._run(self._reserve, job)

    def _reserve(self, tx: Tx, job: NewJob) -> JobRecord:
        who = job.requester
        tx.lock(f"user:{who.key}")
        now = self._clock()
        if job.idempotency_key:
            row = tx.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
            ).fetchone()
            if row is not None:
                return _record(row, duplicate=True)
        limit, context = self._limit_and_context(tx, who, now)
        _refuse_if_barred(context)
        if not self._policy.exempt(who):
            self._check_user_rules(tx, who, now, limit, context)
        period = month_of(now)
        job_id = secrets.token_hex(6)
        row = tx.execute(
            "INSERT INTO jobs (id, idempotency_key, platform, user_id, guild_id, state,"
            " created_at, updated_at, period, reserved_micros, cache_key, params, reply_to,"
            " owner, lease_until, actor)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (
                job_id,
                job.idempotency_key,
                who.platform,
                who.user_id,
                who.guild_id,
                now,
                now,
                period,
                job.price_micros,
                job.cache_key,
                json.dumps(job.params),
                json.dumps(job.reply_to),
                self.owner,
                now + self.lease_s,
                who.key,
            ),
        ).fetchall()[0]
        # Money last, so the budget rows every instance contends for stay locked only briefly:
        # the server's budget first, then the global one; a refusal rolls all of it back.
        holds = [(GLOBAL_SCOPE, context["global_cap"])]
        guild = guild_scope(who.platform, who.guild_id)
        if guild is not None:
            holds.insert(0, (guild, context["guild_cap"]))
        refused = self._hold(tx, period, holds, job.price_micros)
        if refused is not None:
            raise BudgetExhausted(self._policy.budget_message(refused))
        return _record(row)

    def _limit_and_context(self, tx: Tx, who: Requester, now: float) -> tuple[Limit, dict]:
        """The user's quota and the context to judge it, from cached rules when they are
        current (the context query says which version of the rules is in force)."""
        version, rules = self._rules_cache
        limit = self._policy.limit_for(who, rules)
        context = self._context(tx, who, now, limit.window_s)
        if context["rules_version"] != version:
            rules = self._load_rules(tx)
            fresh = self._policy.limit_for(who, rules)
            if fresh.window_s != limit.window_s:
                context = self._context(tx, who, now, fresh.window_s)
            limit = fresh
        return limit, context

    def _load_rules(self, tx: Tx) -> list[QuotaRule]:
        # The version first: a change made between the two reads is simply loaded again.
        version = tx.execute("SELECT version FROM rules_version WHERE id = 1").fetchone()
        rows = tx.execute("SELECT * FROM quota_rules").fetchall()
        rules = [
            QuotaRule(
                r["platform"], r["guild_id"], r["kind"], r["target"], r["jobs"], r["window_hours"]
            )
            for r in rows
        ]
        self._rules_cache = (version["version"], rules)
        return rules

    def _context(self, tx: Tx, who: Requester, now: float, window_s: float) -> dict:
        """What reserving decides on, in one query: pauses, blocks, the user's jobs in flight,
        in the window and in the cooldown, and the caps that apply."""
        guild = guild_scope(who.platform, who.guild_id) or GLOBAL_SCOPE
        unfinished = ",".join("?" * len(UNFINISHED))
        counted = ",".join("?" * len(COUNTED))
        user = (who.platform, who.user_id)
        row = tx.execute(
            "SELECT"
            " (SELECT reason FROM pauses WHERE scope IN (?, ?) LIMIT 1) AS paused,"
            " (SELECT count(*) FROM blocks WHERE platform = ? AND user_id = ?"
            "  AND guild_id IN (?, '')) AS blocked,"
            f" (SELECT count(*) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({unfinished})) AS in_flight,"
            f" (SELECT count(*) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({counted}) AND created_at > ?) AS recent,"
            f" (SELECT max(created_at) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({counted}) AND created_at > ?) AS latest,"
            " (SELECT count(*) FROM budget_caps WHERE scope = ?) AS guild_cap_set,"
            " (SELECT cap_micros FROM budget_caps WHERE scope = ?) AS guild_cap,"
            " (SELECT cap_micros FROM budget_caps WHERE scope = ?) AS global_cap,"
            " (SELECT version FROM rules_version WHERE id = 1) AS rules_version",
            (
                GLOBAL_SCOPE,
                guild,
                *user,
                who.guild_id or "",
                *user,
                *UNFINISHED,
                *user,
                *COUNTED,
                now - window_s,
                *user,
                *COUNTED,
                now - self._policy.cooldown_s,
                guild,
                guild,
                GLOBAL_SCOPE,
            ),
        ).fetchone()
        context = dict(row)
        if not context["guild_cap_set"]:
            context["guild_cap"] = self._policy.guild_budget_micros
        if context["global_cap"] is None:
            context["global_cap"] = self._policy.global_budget_micros
        return context

    def _check_user_rules(
        self, tx: Tx, who: Requester, now: float, limit: Limit, context: dict
    ) -> None:
        if context["in_flight"] >= self._policy.max_in_flight:
            raise JobInFlight(self._policy.max_in_flight)
        latest = context["latest"]
        if self._policy.cooldown_s and latest is not None:
            raise CoolingDown(latest + self._policy.cooldown_s - now)
        if limit.jobs is not None and context["recent"] >= limit.jobs:
            raise QuotaExceeded(
                limit.jobs,
                limit.window_hours,
                _dt(self._next_free(tx, who, now, limit, context["recent"])),
            )

    def _next_free(
        self, tx: Tx, who: Requester, now: float, limit: Limit, recent: int
    ) -> float | None:
        """When the oldest job that keeps the user at the limit leaves the window."""
        if limit.jobs is None or limit.jobs == 0 or recent < limit.jobs:
            return None
        counted = ",".join("?" * len(COUNTED))
        row = tx.execute(
            f"SELECT created_at FROM jobs WHERE platform = ? AND user_id = ?"
            f" AND state IN ({counted}) AND created_at > ? ORDER BY created_at"
            f" LIMIT 1 OFFSET ?",
            (who.platform, who.user_id, *COUNTED, now - limit.window_s, recent - limit.jobs),
        ).fetchone()
        return None if row is None else row["created_at"] + limit.window_s

    def _cap(self, tx: Tx, scope: str) -> int | None:
        row = tx.execute("SELECT cap_micros FROM budget_caps WHERE scope = ?", (scope,)).fetchone()
        if row is not None:
            return row["cap_micros"]
        if scope == GLOBAL_SCOPE:
            return self._policy.global_budget_micros
        return self._policy.guild_budget_micros

    def _hold(
        self, tx: Tx, period: str, holds: list[tuple[str, int | None]], amount: int
    ) -> str | None:
        """Reserve `amount` on every (scope, cap) only where reserved + committed stays within
        the cap: one statement, which the database applies to each budget row one writer at a
        time, in the order given. Returns the scope that refused, if any."""
        for scope, cap in holds:
            if cap is not None and amount > cap:
                return scope
        rows = ", ".join(["(?, ?, ?, ?)"] * len(holds))
        values = [
            v
            for scope, cap in holds
            for v in (scope, period, NO_CAP if cap is None else cap, amount)
        ]
        held = {
            r["scope"]
            for r in tx.execute(
                f"INSERT INTO budgets (scope, period, cap_micros, held_micros) VALUES {rows}"
                " ON CONFLICT (scope, period) DO UPDATE SET cap_micros = excluded.cap_micros,"
                " held_micros = budgets.held_micros + excluded.held_micros"
                " WHERE budgets.held_micros + excluded.held_micros <= excluded.cap_micros"
                " RETURNING scope",
                values,
            ).fetchall()
        }
        # The first that refused, if any (the caller rolls back the others' holds).
        return next((scope for scope, _ in holds if scope not in held), None)

    # -- who runs what ----------------------------------------------------------------------

    async def renew(self, job_ids: Sequence[str]) -> set[str]:
        """Keep this process's jobs its own for another lease; returns those it still owns
        (a job missing was taken over by another process, or settled by an admin)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        unfinished = ",".join("?" * len(UNFINISHED))
        rows = await self._statement(
            f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND id IN ({marks})"
            f" AND state IN ({unfinished}) RETURNING id",
            (self._clock() + self.lease_s, self.owner, *job_ids, *UNFINISHED),
        )
        return {r["id"] for r in rows}

    async def release(self, job_ids: Sequence[str]) -> None:
        """Let this process's lease on these jobs lapse now (it is stopping): the next process
        to look takes them over at once instead of a lease later."""
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            await self._statement(
                f"UPDATE jobs SET lease_until = 0 WHERE owner = ? AND id IN ({marks})",
                (self.owner, *job_ids),
            )

    async def claim_orphans(self, platforms: set[str] | None = None) -> list[JobRecord]:
        """Take over unfinished jobs whose process stopped renewing them (crashed, killed,
        restarted). Two instances claiming at once each get different jobs."""
        return await self._run(self._claim_orphans, platforms)

    def _claim_orphans(self, tx: Tx, platforms: set[str] | None) -> list[JobRecord]:
        now = self._clock()
        marks = ",".join("?" * len(UNFINISHED))
        rows = tx.execute(
            f"SELECT id, platform FROM jobs WHERE state IN ({marks})"
            " AND COALESCE(lease_until, 0) < ? ORDER BY created_at",
            (*UNFINISHED, now),
        ).fetchall()
        claimed = []
        for row in rows:
            if platforms is not None and row["platform"] not in platforms:
                continue
            taken = tx.execute(
                "UPDATE jobs SET owner = ?, lease_until = ?, updated_at = ?, actor = 'system'"
                " WHERE id = ? AND COALESCE(lease_until, 0) < ? RETURNING *",
                (self.owner, now + self.lease_s, now, row["id"], now),
            ).fetchall()
            if taken:
                claimed.append(_record(taken[0]))
        return claimed

    # -- moving through states ---------------------------------------------------------------

    # Each of these is one statement, atomic by itself with what the database's triggers do
    # for it (the audit entry, the budget rows): no transaction round trips around it. Each is
    # also conditional on this process owning the job and on the job being unfinished, and
    # answers False when it changed nothing: a process that lost a job cannot write over
    # whatever its new owner (or an admin) did with it.

    def _owned(
        self,
        assignments: str,
        job_id: str,
        args: Sequence[Any],
        states: Sequence[str] = UNFINISHED,
        extra: str = "",
    ) -> tuple[str, tuple]:
        marks = ",".join("?" * len(states))
        return (
            f"UPDATE jobs SET {assignments}, updated_at = ?, actor = 'system'"
            f" WHERE id = ? AND owner = ? AND state IN ({marks}){extra} RETURNING id",
            (*args, self._clock(), job_id, self.owner, *states),
        )

    async def _changed(self, statement: tuple[str, tuple]) -> bool:
        return bool(await self._statement(*statement))

    async def mark_submitting(self, job_id: str) -> bool:
        """Written just before the POST: from here on the job may be billed."""
        return await self._changed(self._owned("state = 'submitting'", job_id, (), ("queued",)))

    async def mark_submitted(self, job_id: str, request_id: str, resume_ref: dict) -> bool:
        return await self._changed(
            self._owned(
                "state = 'submitted', request_id = ?, resume_ref = ?",
                job_id,
                (request_id, json.dumps(resume_ref)),
                ("queued", "submitting"),
            )
        )

    async def set_state(self, job_id: str, state: JobState) -> bool:
        return await self._changed(self._owned("state = ?", job_id, (str(state),)))

    async def commit(self, job_id: str, cost_micros: int) -> bool:
        # The condition is the charge-once rule: a second commit, or a commit racing a refund,
        # finds nothing to change. `reserved_micros` stays on the job as its history.
        return await self._changed(
            self._owned(
                "cost_micros = ?, committed = 1", job_id, (cost_micros,), extra=" AND committed = 0"
            )
        )

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        return await self._changed(self._owned("state = ?, error = ?", job_id, (str(state), error)))

    async def hold(self, job_id: str, reason: str) -> bool:
        """A submit that may have been billed: its price stays held for an admin to settle."""
        return await self._changed(
            self._owned("state = 'held', error = ?", job_id, (reason,), extra=" AND committed = 0")
        )

    async def refund(self, job_id: str, reason: str) -> bool:
        """Release an uncharged job's reservation and quota slot (its budget rows follow by
        trigger). Only the job's owner, only while it is unfinished and uncharged."""
        return await self._changed(
            self._owned(
                "state = 'refunded', error = ?", job_id, (reason,), extra=" AND committed = 0"
            )
        )

    def _admin_release(self, tx: Tx, job_id: str, reason: str, actor: str) -> bool:
        """An admin releases a settled job's reservation (one never charged)."""
        marks = ",".join("?" * len(UNFINISHED))
        return bool(
            tx.execute(
                "UPDATE jobs SET state = 'refunded', error = ?, updated_at = ?, actor = ?"
                f" WHERE id = ? AND committed = 0 AND state NOT IN ('refunded', {marks})"
                " RETURNING id",
                (reason, self._clock(), actor, job_id, *UNFINISHED),
            ).fetchall()
        )

    async def note(self, job_id: str, action: str, detail: str) -> None:
        """An audit entry about a job that this process may no longer write to."""
        await self._run(self._audit, job_id, "system", action, 0, detail)

    async def admin_refund(self, job_id: str, actor: str, reason: str) -> str:
        return await self._run(self._admin_refund, job_id, actor, reason)

    def _admin_refund(self, tx: Tx, job_id: str, actor: str, reason: str) -> str:
        row = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise InputError("job", f"there is no job {job_id}")
        if row["state"] == "refunded":
            raise InputError("job", f"job {job_id} was already refunded")
        if row["state"] in UNFINISHED:
            # Refunding now would let a running job's charge go unrecorded.
            raise InputError("job", f"job {job_id} is still running; refund it when it ends")
        if self._admin_release(tx, job_id, reason, actor):
            return "released"
        # Segmind billed it: the money stays spent, the user gets the quota slot back.
        marks = ",".join("?" * (len(UNFINISHED) + 1))
        changed = tx.execute(
            f"UPDATE jobs SET state = 'refunded', error = ?, updated_at = ?, actor = ?"
            f" WHERE id = ? AND state NOT IN ({marks})",
            (reason, self._clock(), actor, job_id, "refunded", *UNFINISHED),
        ).rowcount
        if not changed:
            raise InputError("job", f"job {job_id} changed meanwhile; look at it again")
        return "slot"

    # -- admins' controls --------------------------------------------------------------------

    async def set_quota_rule(self, rule: QuotaRule, actor: str) -> None:
        if rule.kind not in RULE_KINDS:
            raise InputError("kind", f"must be one of {', '.join(RULE_KINDS)}")
        if rule.jobs is not None and rule.jobs < 0:
            raise InputError("jobs", "must be 0 or more (or unlimited)")
        if rule.window_hours is not None and rule.window_hours <= 0:
            raise InputError("window", "must be more than 0 hours")
        await self._run(self._set_quota_rule, rule, actor)

    def _set_quota_rule(self, tx: Tx, rule: QuotaRule, actor: str) -> None:
        tx.execute(
            "INSERT INTO quota_rules (platform, guild_id, kind, target, jobs, window_hours)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, guild_id, kind, target)"
            " DO UPDATE SET jobs = excluded.jobs, window_hours = excluded.window_hours",
            (rule.platform, rule.guild_id, rule.kind, rule.target, rule.jobs, rule.window_hours),
        )
        tx.execute("UPDATE rules_version SET version = version + 1 WHERE id = 1")
        jobs = "unlimited" if rule.jobs is None else str(rule.jobs)
        window = f" per {rule.window_hours:g} h" if rule.window_hours else ""
        self._audit(
            tx,
            None,
            actor,
            "set_quota",
            0,
            f"{rule.platform} guild={rule.guild_id or '*'} {rule.kind}={rule.target}:"
            f" {jobs}{window}",
        )

    async def clear_quota_rule(
        self, platform: str, guild_id: str, kind: str, target: str, actor: str
    ) -> bool:
        return await self._run(self._clear_quota_rule, platform, guild_id, kind, target, actor)

    def _clear_quota_rule(self, tx: Tx, platform, guild_id, kind, target, actor) -> bool:
        cursor = tx.execute(
            "DELETE FROM quota_rules WHERE platform = ? AND guild_id = ? AND kind = ?"
            " AND target = ?",
            (platform, guild_id, kind, target),
        )
        if cursor.rowcount:
            tx.execute("UPDATE rules_version SET version = version + 1 WHERE id = 1")
            self._audit(
                tx,
                None,
                actor,
                "clear_quota",
                0,
                f"{platform} guild={guild_id or '*'} {kind}={target}",
            )
        return bool(cursor.rowcount)

    async def set_budget_cap(self, scope: str, cap_micros: int | None, actor: str) -> None:
        if cap_micros is not None and cap_micros < 0:
            raise InputError("budget", "must be 0 or more dollars")
        if scope == GLOBAL_SCOPE and cap_micros is None:
            raise InputError("budget", "the global cap cannot be removed, only changed")
        await self._run(self._set_budget_cap, scope, cap_micros, actor)

    def _set_budget_cap(self, tx: Tx, scope: str, cap: int | None, actor: str) -> None:
        tx.execute(
            "INSERT INTO budget_caps (scope, cap_micros) VALUES (?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET cap_micros = excluded.cap_micros",
            (scope, cap),
        )
        # This month's row follows at once; lowering a cap never cancels what is reserved.
        tx.execute(
            "UPDATE budgets SET cap_micros = ? WHERE scope = ? AND period = ?",
            (NO_CAP if cap is None else cap, scope, month_of(self._clock())),
        )
        self._audit(
            tx, None, actor, "set_budget", cap or 0, f"{scope}: {'no cap' if cap is None else cap}"
        )

    async def block(
        self, platform: str, guild_id: str, user_id: str, actor: str, reason: str = ""
    ) -> None:
        await self._run(self._block, platform, guild_id, user_id, actor, reason)

    def _block(self, tx: Tx, platform, guild_id, user_id, actor, reason) -> None:
        tx.execute(
            "INSERT INTO blocks (platform, guild_id, user_id, reason) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (platform, guild_id, user_id) DO UPDATE SET reason = ?",
            (platform, guild_id, user_id, reason, reason),
        )
        self._audit(
            tx,
            None,
            actor,
            "block",
            0,
            f"{platform}:{user_id} guild={guild_id or '*'} {reason}".rstrip(),
        )

    async def unblock(self, platform: str, guild_id: str, user_id: str, actor: str) -> bool:
        return await self._run(self._unblock, platform, guild_id, user_id, actor)

    def _unblock(self, tx: Tx, platform, guild_id, user_id, actor) -> bool:
        cursor = tx.execute(
            "DELETE FROM blocks WHERE platform = ? AND guild_id = ? AND user_id = ?",
            (platform, guild_id, user_id),
        )
        if cursor.rowcount:
            self._audit(
                tx, None, actor, "unblock", 0, f"{platform}:{user_id} guild={guild_id or '*'}"
            )
        return bool(cursor.rowcount)

    async def allow_channel(
        self, platform: str, guild_id: str, channel_id: str, allowed: bool, actor: str
    ) -> bool:
        """Add or remove a channel where jobs may start; False if nothing changed."""
        return await self._run(self._allow_channel, platform, guild_id, channel_id, allowed, actor)

    def _allow_channel(self, tx: Tx, platform, guild_id, channel_id, allowed, actor) -> bool:
        if allowed:
            changed = tx.execute(
                "INSERT INTO channel_rules (platform, guild_id, channel_id) VALUES (?, ?, ?)"
                " ON CONFLICT (platform, guild_id, channel_id) DO NOTHING",
                (platform, guild_id, channel_id),
            ).rowcount
        else:
            changed = tx.execute(
                "DELETE FROM channel_rules WHERE platform = ? AND guild_id = ? AND channel_id = ?",
                (platform, guild_id, channel_id),
            ).rowcount
        if changed:
            self._audit(
                tx,
                None,
                actor,
                "allow_channel" if allowed else "disallow_channel",
                0,
                f"{platform} guild={guild_id} channel={channel_id}",
            )
        return bool(changed)

    async def allowed_channels(self, platform: str, guild_id: str) -> list[str]:
        """The channels where jobs may start on a server; empty: all of them."""
        rows = await self._run(
            _fetch_all,
            "SELECT channel_id FROM channel_rules WHERE platform = ?"
            " AND guild_id = ? ORDER BY channel_id",
            (platform, guild_id),
        )
        return [r["channel_id"] for r in rows]

    async def pause(self, scope: str, actor: str, reason: str = "") -> None:
        await self._run(self._pause, scope, actor, reason)

    def _pause(self, tx: Tx, scope: str, actor: str, reason: str) -> None:
        tx.execute(
            "INSERT INTO pauses (scope, reason) VALUES (?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET reason = ?",
            (scope, reason, reason),
        )
        self._audit(tx, None, actor, "pause", 0, f"{scope} {reason}".rstrip())

    async def resume(self, scope: str, actor: str) -> bool:
        return await self._run(self._resume, scope, actor)

    def _resume(self, tx: Tx, scope: str, actor: str) -> bool:
        cursor = tx.execute("DELETE FROM pauses WHERE scope = ?", (scope,))
        if cursor.rowcount:
            self._audit(tx, None, actor, "resume", 0, scope)
        return bool(cursor.rowcount)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._run(_fetch_one, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _record(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        return await self.in_states(UNFINISHED)

    async def in_states(self, states: Sequence[str]) -> list[JobRecord]:
        marks = ",".join("?" * len(states))
        rows = await self._run(
            _fetch_all,
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at",
            tuple(states),
        )
        return [_record(r) for r in rows]

    async def quota_status(self, requester: Requester) -> QuotaStatus:
        return await self._run(self._quota_status, requester)

    def _quota_status(self, tx: Tx, who: Requester) -> QuotaStatus:
        now, policy = self._clock(), self._policy
        limit, context = self._limit_and_context(tx, who, now)
        exempt = policy.exempt(who)
        cooldown_until = None
        if policy.cooldown_s and context["latest"] is not None and not exempt:
            cooldown_until = context["latest"] + policy.cooldown_s
        month = month_of(now)
        left = [self._left(tx, month, GLOBAL_SCOPE, context["global_cap"]) or 0]
        guild_left = None
        scope = guild_scope(who.platform, who.guild_id)
        if scope is not None:
            guild_left = self._left(tx, month, scope, context["guild_cap"])
            if guild_left is not None:
                left.append(guild_left)
        return QuotaStatus(
            limit=limit.jobs,
            used=context["recent"],
            next_free_at=_dt(self._next_free(tx, who, now, limit, context["recent"])),
            budget_left_micros=min(left),
            window_hours=limit.window_hours,
            source=limit.source,
            cooldown_until=_dt(cooldown_until),
            in_flight=context["in_flight"],
            max_in_flight=None if exempt else policy.max_in_flight,
            guild_budget_left_micros=guild_left,
            blocked=bool(context["blocked"]),
            paused=context["paused"] is not None,
        )

    async def usage(
        self, month: str | None = None, platform: str | None = None, guild_id: str | None = None
    ) -> list[UsageRow]:
        where, args = [], []
        for column, value in (("period", month), ("platform", platform), ("guild_id", guild_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._run(
            _fetch_all,
            "SELECT period, platform, guild_id, user_id, count(*) AS jobs,"
            " CAST(sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS BIGINT) AS delivered,"
            " CAST(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,"
            " CAST(sum(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS refunded,"
            " CAST(sum(cost_micros) AS BIGINT) AS cost"
            f" FROM jobs {clause} GROUP BY period, platform, guild_id, user_id"
            " ORDER BY period DESC, cost DESC, jobs DESC, user_id",
            args,
        )
        return [
            UsageRow(
                r["period"],
                r["platform"],
                r["guild_id"],
                r["user_id"],
                r["jobs"],
                r["delivered"],
                r["failed"],
                r["refunded"],
                r["cost"],
            )
            for r in rows
        ]

    async def audit_trail(self, job_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if job_id is not None:
            rows = await self._run(
                _fetch_all, "SELECT * FROM audit WHERE job_id = ? ORDER BY id", (job_id,)
            )
        else:
            rows = await self._run(
                _fetch_all, "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            )
            rows = rows[::-1]
        return [
            AuditEntry(
                r["id"],
                _at(r["at"]),
                r["actor"],
                r["action"],
                r["amount_micros"],
                r["job_id"],
                r["detail"],
            )
            for r in rows
        ]

    async def budget(self, month: str | None = None, scope: str = GLOBAL_SCOPE) -> Budget:
        return await self._run(self._budget, month or month_of(self._clock()), scope)

    def _left(self, tx: Tx, month: str, scope: str, cap: int | None) -> int | None:
        """What a budget has left this month (None: no cap), from its one row."""
        if cap is None:
            return None
        row = tx.execute(
            "SELECT held_micros FROM budgets WHERE scope = ? AND period = ?", (scope, month)
        ).fetchone()
        return max(0, cap - (row["held_micros"] if row else 0))

    def _budget(self, tx: Tx, month: str, scope: str) -> Budget:
        row = tx.execute(
            "SELECT cap_micros, held_micros FROM budgets WHERE scope = ? AND period = ?",
            (scope, month),
        ).fetchone()
        cap = self._cap(tx, scope) if row is None else row["cap_micros"]
        where, args = "period = ?", [month]
        if scope != GLOBAL_SCOPE:
            platform, guild = scope.split(":", 1)
            where += " AND platform = ? AND guild_id = ?"
            args += [platform, guild]
        sums = tx.execute(
            "SELECT CAST(COALESCE(sum(CASE WHEN committed = 0 AND state <> 'refunded'"
            " THEN reserved_micros ELSE 0 END), 0) AS BIGINT) AS reserved,"
            " CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) AS committed"
            f" FROM jobs WHERE {where}",
            args,
        ).fetchone()
        return Budget(
            scope,
            month,
            None if cap in (None, NO_CAP) else cap,
            sums["reserved"],
            sums["committed"],
            0 if row is None else row["held_micros"],
        )


def _fetch_one(tx: Tx, sql: str, args=()):
    return tx.execute(sql, args).fetchone()


def _fetch_all(tx: Tx, sql: str, args=()):
    return tx.execute(sql, args).fetchall()


def _refuse_if_barred(context) -> None:
    if context["paused"] is not None:
        raise JobsPaused(context["paused"])
    if context["blocked"]:
        raise UserBlocked()


def _dt(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _record(row, duplicate: bool = False) -> JobRecord:
    return JobRecord(
        id=row["id"],
        platform=row["platform"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        state=JobState(row["state"]),
        created_at=_at(row["created_at"]),
        reserved_micros=row["reserved_micros"],
        cost_micros=row["cost_micros"],
        cache_key=row["cache_key"],
        params=json.loads(row["params"]),
        reply_to=json.loads(row["reply_to"]),
        request_id=row["request_id"],
        resume_ref=json.loads(row["resume_ref"]),
        error=row["error"],
        duplicate=duplicate,
        committed=bool(row["committed"]),
    )
