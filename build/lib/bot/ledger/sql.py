"""The Ledger of bot.ports on any Database: one SQL implementation for every store, in three
parts by who uses them (the job ledger, admins' controls, reports) over one shared base."""

from __future__ import annotations

from .admin import AdminStore
from .jobs import JobStore
from .reports import ReportStore


class SqlLedger(JobStore, AdminStore, ReportStore):
    """The whole ledger (bot.ports.Ledger) on a Database."""
