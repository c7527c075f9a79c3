"""Signed, expiring links to a job's files, served by the bot's web server.

A link is PUBLIC_URL/files/JOB/NAME?e=EXPIRES&s=SIGNATURE, the signature an HMAC-SHA256 over
the path and the expiry with a secret (DOWNLOAD_SECRET, or one kept in DATA_DIR). Nobody can
guess or alter one; each stops working when it expires."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

JOB_ID = re.compile(r"[0-9a-f]{6,32}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PICK_ID = re.compile(r"[A-Za-z0-9_-]{16}")


class LinkCheck(Enum):
    OK = "ok"
    FORBIDDEN = "forbidden"  # tampered, or not a link we made
    EXPIRED = "expired"


class DownloadLinks:
    def __init__(
        self,
        secret: bytes,
        public_url: str,
        lifetime_s: float,
        clock: Callable[[], float] = time.time,
    ):
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.lifetime_s = lifetime_s
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadLinks:
        return cls(secret_of(settings), settings.public_url, settings.download_link_days * 86400)

    @property
    def enabled(self) -> bool:
        return bool(self.public_url)

    def link(self, job_id: str, name: str) -> str:
        path = f"/files/{job_id}/{name}"
        expires = int(self._clock() + self.lifetime_s)
        return f"{self.public_url}{path}?e={expires}&s={self._sign(path, expires)}"

    def viewer_link(self, job_id: str) -> str:
        """PUBLIC_URL/m/JOB.EXPIRES.SIGNATURE: the page that shows the model in 3D."""
        expires = int(self._clock() + self.lifetime_s)
        return f"{self.public_url}/m/{job_id}.{expires}.{self._sign(f'/m/{job_id}', expires)}"

    def check_viewer(self, token: str) -> tuple[LinkCheck, str]:
        """(the check, the job id) of a viewer link's last part."""
        return self._check_token("/m/", token, JOB_ID)

    def pick_link(self, pick_id: str, expires_at: float, base_url: str | None = None) -> str:
        """BASE/p/PICK.EXPIRES.SIGNATURE: the web picker of one member's pick, until it
        expires (the pick's own 15 minutes)."""
        expires = int(expires_at)
        base = (base_url or self.public_url).rstrip("/")
        return f"{base}/p/{pick_id}.{expires}.{self._sign(f'/p/{pick_id}', expires)}"

    def check_pick(self, token: str) -> tuple[LinkCheck, str]:
        return self._check_token("/p/", token, PICK_ID)

    def _check_token(self, prefix: str, token: str, ids: re.Pattern[str]) -> tuple[LinkCheck, str]:
        parts = token.split(".")
        if len(parts) != 3 or not ids.fullmatch(parts[0]):
            return LinkCheck.FORBIDDEN, ""
        found, expires, signature = parts
        return self.check(f"{prefix}{found}", expires, signature), found

    def expires_at(self) -> float:
        return self._clock() + self.lifetime_s

    def check(self, path: str, expires: str, signature: str) -> LinkCheck:
        try:
            when = int(expires)
        except ValueError:
            return LinkCheck.FORBIDDEN
        if not hmac.compare_digest(self._sign(path, when), signature):
            return LinkCheck.FORBIDDEN
        return LinkCheck.OK if self._clock() < when else LinkCheck.EXPIRED

    def _sign(self, path: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def secret_of(settings: Settings) -> bytes:
    """DOWNLOAD_SECRET, or a random one kept in DATA_DIR so links outlive restarts (several
    instances behind one PUBLIC_URL must share DOWNLOAD_SECRET)."""
    given = settings.download_secret.get_secret_value()
    if given:
        return given.encode()
    path = Path(settings.data_dir) / "download.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        path.write_bytes(key)
        path.chmod(0o600)
        return key
