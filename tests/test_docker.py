"""The Docker set-up as the README writes it: what can be checked without a Docker daemon
(the files' own rules; the image itself is built by the Dockerfile's users)."""

from __future__ import annotations

import yaml

from tests.helpers import ROOT


def test_compose_runs_the_bot_beside_postgresql_with_volumes_health_and_restarts():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    bot, db = compose["services"]["bot"], compose["services"]["db"]
    assert bot["build"] == "." and bot["env_file"] == ".env"
    assert bot["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert "@db:5432/" in bot["environment"]["DATABASE_URL"]  # the service's own name
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    for service in (bot, db):
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"]
        [volume] = service["volumes"]
        name, _, target = volume.partition(":")
        assert name in compose["volumes"] and target.startswith("/")  # a named volume each
    assert bot["volumes"] == ["sam3d-data:/data"]
    assert any("/readyz" in part for part in bot["healthcheck"]["test"])
    # The bot's stop (SHUTDOWN_GRACE_S 8 s, then closing) fits in what compose waits.
    assert int(bot["stop_grace_period"].removesuffix("s")) >= 10


def test_the_image_runs_commands_in_its_volume_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    user = next(i for i, line in enumerate(dockerfile) if line.startswith("USER "))
    workdirs = [line for line in dockerfile[user:] if line.startswith("WORKDIR ")]
    assert dockerfile[user] == "USER bot" and workdirs == ["WORKDIR /data"]
    assert 'VOLUME ["/data"]' in dockerfile


def test_the_readme_docker_command_restarts_and_keeps_data_in_a_volume():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Docker", 1)[1].split("\n## ", 1)[0]
    assert "--restart unless-stopped" in section and "-v sam3d-data:/data" in section
    assert "docker compose up -d" in section and "docker logs" in section
