"""The SuperLink launcher serves only the Fleet API on the devices' address (fl_app/federation/superlink.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.config import load_config
from fl_app.federation import deployment
from fl_app.federation.superlink import FleetOnly, fleet_path


def call(app: FleetOnly, path: str, port: int) -> int:
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    app.app = inner
    scope = {"type": "http", "path": path, "server": ("10.0.0.1", port)}
    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def test_only_fleet_paths_pass_on_the_fleet_port() -> None:
    app = FleetOnly(lambda *a: None, fleet_port=9091)  # type: ignore[arg-type]
    assert call(app, "/v1/fleet/pull-messages", 9091) == 200
    for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-nodes", "/docs",
                 "/v1/fleet/../control/stop-run", "/v1/fleet//../control/stop-run", "/v1/fleetx/a"):
        assert call(app, path, 9091) == 404, path
    assert call(app, "/v1/control/list-runs", 9092) == 200  # the loopback port serves everything
    assert fleet_path("/v1/fleet/get-run") and not fleet_path("/v1/fleet/./../control")


def test_devices_get_the_fleet_address_and_flwr_the_loopback_control_address(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}", "fl.superlink_address=0.0.0.0:9091", "fl.devices=2"])
    assert deployment.control_address(cfg) == "127.0.0.1:9090"
    argv = list(deployment.superlink_process(cfg).argv)
    assert argv[argv.index("--fleet-host") + 1] == "0.0.0.0" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "9090"
    node = deployment.supernode_process(cfg, 0, 1)
    assert node.argv[list(node.argv).index("--superlink") + 1] == "0.0.0.0:9091"
    deployment.write_flwr_config(cfg)
    assert 'address = "127.0.0.1:9090"' in (deployment.flwr_home(cfg) / "config.toml").read_text()
