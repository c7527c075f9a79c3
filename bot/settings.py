"""All configuration, read from the environment and `.env`; the only module that looks there."""

from __future__ import annotations

import os
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """An invalid setting; the message is one line naming the variable and what is allowed."""


def check_data_dir(path: Path) -> None:
    """DATA_DIR must be a folder this user can write; say which and how to fix it if not (a
    Docker bind mount owned by root is the usual case: the image runs as uid 10001)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        uid = os.getuid() if hasattr(os, "getuid") else "this user"
        raise SettingsError(
            f"DATA_DIR {path} is not writable by uid {uid} ({exc.strerror or exc}): "
            f"give it to that user (chown -R {uid} {path}) or use a Docker named volume"
        ) from None


class Settings(BaseSettings):
    """Every setting the bot has. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Segmind
    segmind_api_key: SecretStr = SecretStr("")
    segmind_base_url: str = "https://api.segmind.com"
    segmind_api_version: Literal["v1", "v2"] = "v2"
    segmind_poll_interval_s: float = Field(2.0, gt=0, le=60)
    # Calls a minute to Segmind for all instances on one database together (submits, polls,
    # results), spaced evenly; 0: unpaced (each instance only waits out the 429s it gets).
    segmind_calls_per_minute: float = Field(0, ge=0, le=6000)
    segmind_job_timeout_s: float = Field(900.0, gt=0)
    segmind_rate_limit_max_wait_s: float = Field(120.0, ge=0)
    max_output_bytes: int = Field(300_000_000, gt=0)

    # Storage
    data_dir: Path = Path("./data")
    database_url: str = ""
    database_pool_size: int = Field(4, ge=1, le=100)
    job_lease_seconds: float = Field(30.0, ge=1)
    # Jobs' files (photos, masks, models, pictures) are removed this many days after their
    # job last changed; the ledger's rows (the money history) stay.
    files_keep_days: float = Field(30.0, gt=0)
    # Below this much free space on DATA_DIR's disk new jobs are refused (0: never).
    min_free_disk_mb: int = Field(500, ge=0)
    ledger_timeout_s: float = Field(30.0, gt=0, le=600)

    # Chat platforms
    discord_token: SecretStr = SecretStr("")
    discord_api_url: str = "https://discord.com/api/v10"
    discord_dev_guild_id: str = ""
    discord_sync_commands: bool = True
    # Several instances on one Discord bot: each runs the shards listed here ("0,1"), out of
    # DISCORD_SHARD_COUNT in all. Empty: this instance runs every shard Discord suggests.
    discord_shard_count: int | None = Field(None, ge=1, le=10_000)
    discord_shard_ids: str = ""
    progress_edit_interval_s: float = Field(3.0, ge=0)
    slack_bot_token: SecretStr = SecretStr("")
    slack_signing_secret: SecretStr = SecretStr("")
    slack_app_token: SecretStr = SecretStr("")
    slack_api_url: str = "https://slack.com/api/"
    slack_admin_users: str = ""  # Slack user ids (U...) who may use /sam3d admin, comma-separated

    # Web server
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    public_url: str = ""
    download_secret: SecretStr = SecretStr("")
    download_link_days: float = Field(7.0, gt=0, le=365)
    metrics_token: SecretStr = SecretStr("")

    # Money and fair use
    price_per_job_usd: Decimal = Field(Decimal("0.065"), ge=0, le=100)
    global_budget_usd: Decimal = Field(Decimal("20"), ge=0)
    guild_budget_usd: Decimal | None = Field(None, ge=0)
    quota_jobs: int = Field(5, ge=0)
    quota_window_hours: float = Field(24.0, gt=0)
    cooldown_seconds: float = Field(0.0, ge=0)
    max_jobs_in_flight_per_user: int = Field(2, ge=1)
    admins_exempt: bool = True
    max_concurrent_jobs: int = Field(4, ge=1, le=256)
    # At SIGTERM: how long jobs in flight may take to finish before they are left to resume.
    shutdown_grace_s: float = Field(8.0, ge=0, le=300)

    # Input images
    max_image_bytes: int = Field(20_000_000, gt=0)
    max_image_pixels: int = Field(50_000_000, gt=0)
    max_image_side: int = Field(2048, ge=256)
    image_fetch_timeout_s: float = Field(20.0, gt=0)

    # Previews
    render_enabled: bool = True
    render_size: int = Field(512, ge=64, le=2048)
    render_source: Literal["auto", "mesh", "splat"] = "auto"
    render_background: str = "#e9e9ec"
    render_turntable: bool = True
    render_turntable_frames: int = Field(24, ge=2, le=120)
    render_turntable_size: int = Field(320, ge=64, le=1024)
    render_timeout_s: float = Field(30.0, gt=0)
    render_max_triangles: int = Field(5_000_000, gt=0)
    render_max_splats: int = Field(100_000, gt=0)
    render_backend: Literal["auto", "egl", "osmesa"] = "auto"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("segmind_base_url", "slack_api_url", "discord_api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if value == "" and info.field_name == "public_url":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/") if info.field_name != "slack_api_url" else value

    @field_validator("render_background")
    @classmethod
    def _colour(cls, value: str) -> str:
        if value != "transparent" and not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError("must be a colour like #e9e9ec, or transparent")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be empty, sqlite:///PATH or postgresql://...")
        return value

    @field_validator("discord_shard_ids")
    @classmethod
    def _shard_ids(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            return ""
        count = info.data.get("discord_shard_count")
        try:
            ids = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("must be shard numbers separated by commas, e.g. 0,1") from None
        if count is None:
            raise ValueError("needs DISCORD_SHARD_COUNT, the number of shards in all")
        if len(set(ids)) != len(ids) or any(not 0 <= i < count for i in ids):
            raise ValueError(f"must be different numbers from 0 to {count - 1}")
        return ",".join(map(str, ids))

    @property
    def shard_ids(self) -> list[int] | None:
        return (
            [int(i) for i in self.discord_shard_ids.split(",")] if self.discord_shard_ids else None
        )

    @field_validator("discord_shard_count", mode="before")
    @classmethod
    def _no_count(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("guild_budget_usd", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def offline(self) -> bool:
        """No API key: jobs run on the free offline backend."""
        return not self.segmind_api_key.get_secret_value()

    @property
    def sqlite_path(self) -> Path:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.data_dir / "sam3d.sqlite3"

    @property
    def slack_admins(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.slack_admin_users.split(",") if u.strip())

    @property
    def price_micros(self) -> int:
        return usd_to_micros(self.price_per_job_usd)

    @property
    def global_budget_micros(self) -> int:
        return usd_to_micros(self.global_budget_usd)


def usd_to_micros(usd: Decimal | float | str) -> int:
    """Money is kept as integer millionths of a dollar, so sums never drift."""
    return int((Decimal(str(usd)) * 1_000_000).to_integral_value())


def micros_to_usd(micros: int) -> Decimal:
    return Decimal(micros) / 1_000_000


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build Settings, turning a validation failure into one readable line."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def without_password(text: str) -> str:
    """A URL's password (postgresql://user:secret@host) as ***."""
    return re.sub(r"(://[^/:@\s]*:)[^@/\s]*@", r"\1***@", text)


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = str(first["loc"][0]).upper() if first["loc"] else "settings"
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    if name.endswith(("_KEY", "_TOKEN", "_SECRET")):
        got = None  # never echo a secret back
    elif isinstance(got, str):
        got = without_password(got)
    shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
    return f"{name}: {message}{shown}"
