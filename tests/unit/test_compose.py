"""docker-compose.yml is valid for Docker Compose v2 (`docker compose config -q`).

No Docker engine runs here, but `config -q` needs none: it only parses and
checks the file. When the docker client has no compose plugin, the test
builds the standalone binary once from the Go module proxy into
``.cache/tools/bin`` (a test-only tool: `make run` never needs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
COMPOSE_VERSION = "v2.40.3"
LOCAL_COMPOSE = PROJECT_ROOT / ".cache" / "tools" / "bin" / "docker-compose"


def build_compose(target: Path) -> None:
    """``go build`` Docker Compose ``COMPOSE_VERSION`` (~2 min the first time, then cached)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("neither `docker compose` nor Go (to build it) is available")
    module = f"github.com/docker/compose/v2@{COMPOSE_VERSION}"
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    subprocess.run([go, "mod", "download", module], check=True, env=env, capture_output=True)
    modcache = subprocess.run([go, "env", "GOMODCACHE"], check=True, capture_output=True, text=True).stdout.strip()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    subprocess.run([go, "build", "-o", str(partial), "./cmd"], check=True, env=env, capture_output=True,
                   cwd=Path(modcache) / "github.com" / "docker" / "compose" / f"v2@{COMPOSE_VERSION}")
    partial.replace(target)


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    """`docker compose` if the plugin is there, else the standalone binary (built if missing)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if not LOCAL_COMPOSE.is_file():
        build_compose(LOCAL_COMPOSE)
    return [str(LOCAL_COMPOSE)]


def test_compose_file_validates(compose_command: list[str]) -> None:
    env = {**os.environ, "SUPERSET_ADMIN_PASSWORD": "only-for-validation"}
    for profile in ([], ["--profile", "app"]):
        proc = subprocess.run([*compose_command, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
                              capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
        assert proc.returncode == 0, proc.stderr
    env.pop("SUPERSET_ADMIN_PASSWORD")
    refused = subprocess.run([*compose_command, "-f", str(COMPOSE_FILE), "--profile", "app", "config", "-q"],
                             capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
    assert refused.returncode != 0 and "SUPERSET_ADMIN_PASSWORD" in refused.stderr


def test_compose_uses_official_images_and_exposes_the_documented_ports() -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    services = spec["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"].startswith("mongo:")
    assert "8080:8080" in services["kafka-ui"]["ports"]
    assert "9092:9092" in services["kafka"]["ports"]
    assert "27017:27017" in services["mongo"]["ports"]


def test_compose_runs_every_component_of_the_pipeline_and_the_documented_ports() -> None:
    from fl_app.pipeline import COMPONENTS, SUPERVISOR

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    commands = [s["command"] for s in services.values() if "command" in s]
    assert all(s.get("restart") == "unless-stopped" for s in services.values()
               if s.get("profiles") == ["app"] and s["command"][1] != "services")  # long-running ones
    for component in COMPONENTS:
        if component is SUPERVISOR:  # in compose, Docker restarts containers
            continue
        wanted = ["fl-app", *component.command]
        assert any(c[:len(wanted)] == wanted for c in commands), f"no service runs {' '.join(wanted)}"
    assert "8000:8000" in services["api"]["ports"] and "8088:8088" in services["superset"]["ports"]
    assert "9091:9091" in services["federation"]["ports"]
    # Superset has no default password: compose refuses to start without one.
    assert services["superset"]["environment"]["SUPERSET_ADMIN_PASSWORD"].startswith("${SUPERSET_ADMIN_PASSWORD:?")
