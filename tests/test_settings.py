"""Settings from the environment and .env, with one-line errors that never echo secrets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.settings import SettingsError, load_settings


def test_defaults_with_nothing_set(settings_env, tmp_path):
    settings = load_settings(env_file=None)
    assert settings.offline
    assert settings.segmind_base_url == "https://api.segmind.com"
    assert settings.segmind_api_version == "v2"
    assert settings.price_micros == 65_000
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.sqlite_path.name == "sam3d.sqlite3"
    assert settings.slack_api_url == "https://slack.com/api/"


def test_fixed_names_are_read(settings_env, tmp_path):
    settings_env.setenv("SEGMIND_API_KEY", "sk-abc")
    settings_env.setenv("SEGMIND_BASE_URL", "http://127.0.0.1:9/")
    settings_env.setenv("SEGMIND_API_VERSION", "v1")
    settings_env.setenv("PRICE_PER_JOB_USD", "0.07")
    settings_env.setenv("HTTP_PORT", "9090")
    settings = load_settings(env_file=None)
    assert not settings.offline
    assert settings.segmind_base_url == "http://127.0.0.1:9"
    assert settings.segmind_api_version == "v1"
    assert settings.price_per_job_usd == Decimal("0.07")
    assert "sk-abc" not in repr(settings) and "sk-abc" not in str(settings.model_dump())


def test_dotenv_file_is_read_and_environment_wins(settings_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("QUOTA_JOBS=9\nHTTP_PORT=7000\n")
    settings_env.setenv("HTTP_PORT", "7001")
    settings = load_settings(env_file=env_file)
    assert (settings.quota_jobs, settings.http_port) == (9, 7001)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("SEGMIND_API_VERSION", "v3", "SEGMIND_API_VERSION: Input should be 'v1' or 'v2'"),
        ("HTTP_PORT", "99999", "HTTP_PORT: Input should be less than or equal to 65535"),
        ("SEGMIND_BASE_URL", "ftp://x", "SEGMIND_BASE_URL: must be an http(s):// URL"),
        ("PRICE_PER_JOB_USD", "-1", "PRICE_PER_JOB_USD: Input should be greater than or equal"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL: must be empty, sqlite:///PATH or"),
        ("QUOTA_JOBS", "many", "QUOTA_JOBS: Input should be a valid integer"),
    ],
)
def test_invalid_values_stop_with_one_line(settings_env, name, value, words):
    settings_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith(words)
    assert "\n" not in message


def test_env_example_leaves_what_the_docker_image_sets_alone():
    """Copied to .env for `docker run --env-file`, it must not undo the image's /data and
    0.0.0.0 (the bot could not write, or nothing outside could reach it)."""
    from tests.helpers import ROOT

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "DATA_DIR=/data" in dockerfile and "HTTP_HOST=0.0.0.0" in dockerfile
    active = [ln for ln in (ROOT / ".env.example").read_text().splitlines() if "=" in ln]
    active = [ln for ln in active if not ln.startswith("#")]
    assert not [ln for ln in active if ln.startswith(("DATA_DIR=", "HTTP_HOST="))]


def test_an_unwritable_data_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    """Not a folder this user can write (here a file stands where it should be, which even
    root cannot write into): one line naming DATA_DIR and the fix, not 'the database is not
    reachable'."""
    import io

    from bot.cli import main

    blocked = tmp_path / "data"
    blocked.write_text("a file, not a folder")
    monkeypatch.setenv("DATA_DIR", str(blocked))
    err = io.StringIO()
    code = main(["usage"], io.StringIO(), err)
    said = err.getvalue()
    assert code != 0 and "DATA_DIR" in said and "not writable" in said and "chown -R" in said
    assert len(said.strip().splitlines()) == 1


def test_env_example_documents_every_setting():
    from bot.settings import Settings
    from tests.helpers import ROOT

    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        line = next(
            (
                ln
                for ln in example.splitlines()
                if ln.removeprefix("# ").startswith(f"{name.upper()}=")
            ),
            None,
        )
        assert line is not None, f"{name.upper()} is missing from .env.example"
        before = example.split(line)[0].rstrip().splitlines()[-1]
        assert before.startswith("#"), f"{name.upper()} has no comment"
    for secret in (
        "SEGMIND_API_KEY",
        "DISCORD_TOKEN",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
    ):
        assert f"\n{secret}=\n" in example


def test_a_database_url_with_a_password_is_never_echoed_whole(settings_env):
    settings_env.setenv("DATABASE_URL", "mysql://bot:hunter2@db.internal:3306/sam3d")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    assert "hunter2" not in str(caught.value)
    assert "(got 'mysql://bot:***@db.internal:3306/sam3d')" in str(caught.value)


def test_the_database_password_and_every_secret_are_redacted_from_logs(settings_env):
    from bot.logs import RedactSecrets, secrets_of

    settings_env.setenv("DATABASE_URL", "postgresql://bot:hun%40ter2@db.internal/sam3d")
    settings_env.setenv("DOWNLOAD_SECRET", "link-signing-secret")
    settings_env.setenv("METRICS_TOKEN", "scrape-token")
    redact = RedactSecrets(secrets_of(load_settings(env_file=None))).redact
    said = redact("could not connect as bot with hun@ter2; scrape-token; link-signing-secret")
    assert "hun@ter2" not in said and "scrape-token" not in said
    assert "link-signing-secret" not in said and said.startswith("could not connect as bot")


def test_discord_shards_are_split_only_in_a_way_that_adds_up():
    from bot.settings import SettingsError, load_settings

    ok = load_settings(None, discord_shard_count="4", discord_shard_ids="3, 1")
    assert ok.shard_ids == [3, 1] and ok.discord_shard_count == 4
    assert load_settings(None).shard_ids is None
    for count, ids, says in (
        ("", "0,1", "DISCORD_SHARD_COUNT"),
        ("2", "0,2", "from 0 to 1"),
        ("2", "1,1", "different"),
        ("2", "one", "separated by commas"),
    ):
        try:
            load_settings(None, discord_shard_count=count, discord_shard_ids=ids)
        except SettingsError as error:
            assert "DISCORD_SHARD_IDS" in str(error) and says in str(error), str(error)
        else:
            raise AssertionError(f"{count!r} {ids!r} was accepted")
