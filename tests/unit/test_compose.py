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

from core.config import PROJECT_ROOT, load_config

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


SECRETS = {"SUPERSET_ADMIN_PASSWORD": "only-for-validation", "FL_APP_API_KEY": "only-for-validation-0123",
           "KAFKA_SASL_PASSWORD": "only-for-validation-kafka", "MONGO_PASSWORD": "only-for-validation-mongo"}


def test_compose_file_validates(compose_command: list[str]) -> None:
    env = {**os.environ, **SECRETS}
    for profile in ([], ["--profile", "app"], ["--profile", "debug"]):
        proc = subprocess.run([*compose_command, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
                              capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
        assert proc.returncode == 0, proc.stderr
    for secret in SECRETS:  # no default for either: compose refuses to start the app without it
        refused = subprocess.run([*compose_command, "-f", str(COMPOSE_FILE), "--profile", "app", "config", "-q"],
                                 capture_output=True, text=True, cwd=PROJECT_ROOT,
                                 env={k: v for k, v in env.items() if k != secret})
        assert refused.returncode != 0 and secret in refused.stderr


def test_compose_uses_official_images() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"].startswith("mongo:")


PUBLISHED = {"api": ["8000:8000"], "superset": ["8088:8088"], "federation": ["9091:9091"]}  # what users open


def test_compose_publishes_only_what_users_open_and_keeps_the_rest_internal() -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    assert spec["networks"]["internal"]["internal"] is True  # no route out, nothing published
    for name, service in spec["services"].items():
        assert service.get("ports", []) == PUBLISHED.get(name, []), name
        assert "network_mode" not in service, name
        assert set(service["networks"]) == ({"internal", "public"} if name in PUBLISHED else {"internal"}), name
    # The federation's published port is the Fleet API alone; its Control API stays on the container's loopback.
    command = spec["services"]["federation"]["command"]
    assert "fl.superlink_address=0.0.0.0:9091" in command and not any("control_address" in c for c in command)


def test_containers_run_as_non_root_users() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, service in services.items():
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name} runs as root"
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")  # the image's last word
    built_user = users[-1]
    assert all(s["user"] == built_user for s in services.values() if s.get("image") == "fl-iot-stream:latest")


def test_no_secret_is_committed() -> None:
    """Secrets come from the environment or an uncommitted .env: never a literal in the file, never tracked."""
    from core.secrets import is_secret_key, url_passwords

    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in spec["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if is_secret_key(key):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}: {key} has a literal value"
            assert not url_passwords(str(value)), f"{name}: {key} holds a password"
    for ignore in (".gitignore", ".dockerignore"):  # not committed, not copied into the image
        assert ".env" in (PROJECT_ROOT / ignore).read_text().split(), ignore
    tracked = subprocess.run(["git", "ls-files", ".env", "*.env"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert tracked.stdout.strip() == ""


def test_compose_runs_every_component_of_the_pipeline_and_the_documented_ports() -> None:
    from fl_app.pipeline import COMPONENTS, SUPERVISOR

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    commands = [s["command"] for s in services.values() if "command" in s]
    assert all(s.get("restart") == "unless-stopped" for s in services.values()
               if s.get("profiles") == ["app"] and s["command"][1] != "services")  # long-running ones
    defaults = load_config([])
    for component in COMPONENTS:
        if component is SUPERVISOR or not component.enabled(defaults):  # in compose, Docker restarts containers
            continue
        wanted = ["fl-app", *component.command]
        assert any(c[:len(wanted)] == wanted for c in commands), f"no service runs {' '.join(wanted)}"
    # Superset has no default password: compose refuses to start without one.
    assert services["superset"]["environment"]["SUPERSET_ADMIN_PASSWORD"].startswith("${SUPERSET_ADMIN_PASSWORD:?")
