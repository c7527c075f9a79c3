"""What Segmind's answers mean: its documented statuses as errors with the member's words, its
error messages, and its rate-limit reset header."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .. import errors


def message_from(body: bytes, content_type: str) -> str:
    text = body[:4000].decode("utf-8", "replace")
    if "html" in content_type or text.lstrip().lower().startswith(("<!doctype", "<html")):
        return ""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # JSON nested past sense too
        return text.strip()[:200]
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value.strip()[:200]
    return ""


ErrorText = tuple[type[errors.UpstreamError], str]

# Segmind's documented statuses: the error each becomes and what the member reads ({detail} is
# Segmind's own message, when it sent one). 406 means two things; its message tells which.
STATUS_ERRORS: dict[int, ErrorText] = {
    400: (errors.UpstreamRejected, "Segmind could not use this request{detail}"),
    401: (
        errors.UpstreamAuthError,
        "Segmind refused the bot's API key; an admin needs to check SEGMIND_API_KEY.",
    ),
    403: (errors.UpstreamAuthError, "Segmind refused this account access to SAM 3D Objects."),
    404: (
        errors.ResultExpired,
        "Segmind no longer knows this request (records expire after about an hour).",
    ),
    405: (
        errors.UpstreamRejected,
        "Segmind refused the call (HTTP 405); SEGMIND_BASE_URL may be wrong.",
    ),
    406: (errors.UpstreamRejected, "Segmind refused the input format{detail}"),
    410: (
        errors.ModelRetired,
        "Segmind has retired this version of SAM 3D Objects; the bot needs an update.",
    ),
    422: (errors.GenerationFailed, "SAM 3D could not make a model from this photo{detail}"),
    429: (errors.RateLimited, "Segmind is rate-limiting the bot right now; try again in a minute."),
}
OUT_OF_CREDITS: ErrorText = (
    errors.InsufficientCredits,
    "The bot's Segmind account is out of credits; an admin needs to top it up.",
)
SERVER_ERROR: ErrorText = (
    errors.UpstreamUnavailable,
    "Segmind had a server error (HTTP {status}); try again later.",
)
OTHER_STATUS: ErrorText = (errors.UpstreamError, "Segmind answered HTTP {status}{detail}")


def error_for_status(status: int, message: str, *, charged: bool = False) -> errors.UpstreamError:
    """Map one of Segmind's documented statuses to a typed error with a user message."""
    if status == 406 and "credit" in message.lower():
        kind, text = OUT_OF_CREDITS
    elif status >= 500:
        kind, text = SERVER_ERROR
    else:
        kind, text = STATUS_ERRORS.get(status, OTHER_STATUS)
    detail = f": {message}" if message else ""
    # Only a server error can follow a billed result (a download failing); the rest never do.
    return kind(
        text.format(detail=detail, status=status),
        status=status,
        charged=charged and status >= 500,
    )


def parse_reset_at(value: str | None, now: float) -> float | None:
    """`x-rate-limit-reset-at-utc` as seconds from now; epoch (s or ms), ISO 8601 or HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
        when = number / 1000 if number > 1e11 else number
        return when - now
    except ValueError:
        pass
    for parse in (datetime.fromisoformat, parsedate_to_datetime):
        try:
            moment = parse(
                value.replace("Z", "+00:00") if parse is datetime.fromisoformat else value
            )
        except (ValueError, TypeError):
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() - now
    return None


# --- output files ---------------------------------------------------------------------------
