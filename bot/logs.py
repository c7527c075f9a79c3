"""Logging set-up that keeps secrets out of every line, whatever is being logged."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from .settings import Settings

REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        # Formatters then use the cleaned text, never the exception again (the JSON one would).
        record.exc_info = None
        cleaned = self.redact(message)
        text = self.redact(record.exc_text) if record.exc_text else record.exc_text
        if cleaned != message or text != record.exc_text:
            record.msg, record.args, record.exc_text = cleaned, None, text
        return True

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def secrets_of(settings: Settings) -> list[str]:
    found = [
        settings.segmind_api_key.get_secret_value(),
        settings.discord_token.get_secret_value(),
        settings.slack_bot_token.get_secret_value(),
        settings.slack_signing_secret.get_secret_value(),
        settings.slack_app_token.get_secret_value(),
        settings.download_secret.get_secret_value(),
        settings.metrics_token.get_secret_value(),
    ]
    # DATABASE_URL is no secret as a whole, but its password is (a driver's error names it).
    try:
        password = urlsplit(settings.database_url).password
    except ValueError:
        password = None
    return [*found, *([unquote(password)] if password else [])]


_current_job: ContextVar[str | None] = ContextVar("job", default=None)


@contextmanager
def about_job(job_id: str) -> Iterator[None]:
    """Whatever is logged meanwhile (in this task and those it starts) names the job."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class NameJob(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _current_job.get()
        return True


# LOG_FORMAT=json: one object a line for log shippers, the job's id a field of its own.
JSON_FIELDS = ["levelname", "name", "message", "job_id"]
JSON_NAMES = {"levelname": "level", "name": "logger"}


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            JSON_FIELDS, rename_fields=JSON_NAMES, timestamp="time", json_ensure_ascii=False
        )
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(settings: Settings, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(settings.log_format))
    handler.addFilter(NameJob())
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
