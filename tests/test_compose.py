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

from fl_app.config import PROJECT_ROOT

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
    for profile in ([], ["--profile", "app"]):
        proc = subprocess.run([*compose_command, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
                              capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert proc.returncode == 0, proc.stderr


def test_compose_uses_official_images_and_exposes_the_documented_ports() -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    services = spec["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"].startswith("mongo:")
    assert "8080:8080" in services["kafka-ui"]["ports"]
    assert "9092:9092" in services["kafka"]["ports"]
    assert "27017:27017" in services["mongo"]["ports"]
