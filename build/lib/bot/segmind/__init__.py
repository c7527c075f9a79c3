"""Segmind's SAM 3D Objects API (v2 submit + poll, or v1 blocking), in four parts: the client
(submit, poll, resume), the transport (the key's origin, redirects, retries, 429 waits, caps),
the outputs (finding, downloading and naming a result's files) and the status table (what
each of Segmind's answers means)."""

from .client import Credits, SegmindClient, build_payload
from .status import error_for_status, parse_reset_at
from .transport import RetryPolicy

__all__ = [
    "Credits",
    "RetryPolicy",
    "SegmindClient",
    "build_payload",
    "error_for_status",
    "parse_reset_at",
]
