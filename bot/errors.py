"""Domain errors: each carries a short message fit for the user and whether money was spent."""

from __future__ import annotations

from datetime import datetime


class BotError(Exception):
    """Base of every error a user may see. `charged` says whether Segmind billed the call."""

    code = "error"
    charged = False

    def __init__(self, user_message: str, *, charged: bool | None = None):
        super().__init__(user_message)
        self.user_message = user_message
        if charged is not None:
            self.charged = charged


class InputError(BotError):
    """Something the user gave is not usable; names the field and what is allowed."""

    code = "bad_input"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class QuotaExceeded(BotError):
    code = "quota"

    def __init__(self, limit: int, window_hours: float, next_free_at: datetime | None):
        when = f" The next one frees at {next_free_at:%Y-%m-%d %H:%M} UTC." if next_free_at else ""
        super().__init__(f"You have used all {limit} jobs allowed per {window_hours:g} h.{when}")
        self.next_free_at = next_free_at


class BudgetExhausted(BotError):
    code = "budget"


class JobInFlight(BotError):
    """The user already has as many jobs queued or running as the policy allows."""

    code = "busy"

    def __init__(self, limit: int):
        jobs = "a job" if limit == 1 else f"{limit} jobs"
        super().__init__(f"You already have {jobs} on the way; wait for one to finish.")


class CoolingDown(BotError):
    code = "cooldown"

    def __init__(self, seconds_left: float):
        super().__init__(
            f"Please wait {max(1, round(seconds_left))} s before your next job (cooldown)."
        )
        self.seconds_left = seconds_left


class UserBlocked(BotError):
    code = "blocked"

    def __init__(self) -> None:
        super().__init__("An admin has blocked you from making 3D models with this bot here.")


class JobsPaused(BotError):
    code = "paused"

    def __init__(self, reason: str = ""):
        if len(reason) > 200:  # kept from before reasons had a limit
            reason = reason[:199] + "…"
        why = f" ({reason})" if reason else ""
        super().__init__(f"New jobs are paused by the admins{why}; please try again later.")


class JobCancelled(BotError):
    """The member (or an admin) cancelled a job while it waited its turn."""

    code = "cancelled"

    def __init__(self) -> None:
        super().__init__("Cancelled.")


class DiskFull(BotError):
    """The bot's disk is below MIN_FREE_DISK_MB: no new jobs (before anything is charged), or
    a made model could not be kept (charged: Segmind billed it)."""

    code = "disk_full"

    def __init__(self, charged: bool = False):
        if charged:
            message = (
                "The model was made, but the bot's disk is full, so it could not be kept; "
                "an admin has been told."
            )
        else:
            message = (
                "The bot's disk is nearly full, so it takes no new models for now; nothing "
                "was charged. An admin has been told."
            )
        super().__init__(message, charged=charged)


class LedgerUnavailable(BotError):
    """The database could not be reached: nothing was reserved, so nothing needs a refund."""

    code = "ledger"

    def __init__(self) -> None:
        super().__init__("The bot's database is not reachable right now; please try again soon.")


class LedgerTimeout(LedgerUnavailable):
    """The database did not answer within the ledger's time bound."""

    code = "ledger_timeout"


class UpstreamError(BotError):
    """Segmind said no, or could not be reached. `status` is the HTTP status when there was one."""

    code = "upstream"

    def __init__(self, user_message: str, *, status: int | None = None, charged: bool = False):
        super().__init__(user_message, charged=charged)
        self.status = status


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth"


class InsufficientCredits(UpstreamError):
    code = "insufficient_credits"


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"


class ModelRetired(UpstreamError):
    code = "model_retired"


class GenerationFailed(UpstreamError):
    code = "generation_failed"


class SubmitUncertain(UpstreamError):
    """The submit may have reached Segmind (the connection broke after the body went out):
    never sent again, never refunded as unsent."""

    code = "submit_uncertain"


class RateLimited(UpstreamError):
    code = "rate_limited"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ResultExpired(UpstreamError):
    code = "result_expired"


class BadUpstreamResult(UpstreamError):
    code = "bad_result"


class OutputTooLarge(UpstreamError):
    code = "output_too_large"


class JobTimedOut(UpstreamError):
    code = "timeout"


class RenderError(BotError):
    code = "render"


class DeliveryError(BotError):
    code = "delivery"


class ServiceStopping(BotError):
    code = "stopping"


class JobLost(Exception):
    """This process no longer owns the job (its lease lapsed and another process took it, or
    it was settled meanwhile): it stops working on it at once and writes nothing more."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} is no longer this process's")
        self.job_id = job_id


class AdapterFailed(BotError):
    """A chat platform refused the bot in a way that will not mend by itself (a bad token)."""

    code = "adapter"
