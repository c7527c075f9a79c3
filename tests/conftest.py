from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

from tests import netguard
from tests.fakes.segmind import API_KEY, FakeSegmind
from tests.helpers import CLEAN_ENV_DROP

netguard.install()

pytest_plugins = ["tests.pipeline"]

# Property tests: a fixed seed and a bounded number of examples in the suite; many more with
# `--hypothesis-profile=long` (random seeds).
settings.register_profile("default", max_examples=200, derandomize=True)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile("default")  # the pipeline's fixtures: http, ledger, make_service


@pytest.fixture(autouse=True)
def no_network_past_loopback():
    before = len(netguard.violations)
    yield
    reached = netguard.violations[before:]
    assert not reached, f"test reached past 127.0.0.1: {reached}"


def photo_bytes(
    width: int = 640,
    height: int = 480,
    fmt: str = "PNG",
    exif_orientation=None,
    colour=(200, 40, 30),
) -> bytes:
    """A plain backdrop with one coloured disc in the middle: an object to find."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (230, 228, 220)
    r = min(width, height) * 0.3
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < r * r
    image[disc] = colour
    picture = Image.fromarray(image)
    out = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        picture.save(out, fmt, exif=exif)
    else:
        picture.save(out, fmt)
    return out.getvalue()


@pytest.fixture
def photo() -> bytes:
    return photo_bytes()


@pytest.fixture
async def fake_segmind():
    async with FakeSegmind() as fake:
        yield fake


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings_env(monkeypatch, data_dir):
    """A clean environment: only what a test sets counts, never the developer's .env."""
    for name in CLEAN_ENV_DROP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return monkeypatch


__all__ = ["API_KEY", "photo_bytes"]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL on 127.0.0.1. Skipped only where it is not installed, never in CI."""
    from tests.postgres import PostgresUnavailable, start_server, stop_server

    try:
        url, directory = start_server()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have PostgreSQL: {exc}")
        pytest.skip(f"no PostgreSQL here: {exc}")
    yield url
    stop_server(directory)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    from tests.postgres import fresh_schema_url

    return fresh_schema_url(postgres_server)
