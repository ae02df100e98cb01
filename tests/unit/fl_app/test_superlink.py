"""The SuperLink launcher serves only the Fleet API on the devices' address (fl_app/federation/superlink.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.config import load_config
from fl_app.federation import deployment
from fl_app.federation.superlink import ControlPathsOnly, FleetOnly, control_middlewares_on_control_paths, fleet_path


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


# ------------------------------------------------- flwr's Control middlewares on Control paths only
def stock_and_scoped(monkeypatch: Any) -> tuple[Any, Any]:
    from flwr.superlink import main as superlink_main

    stock = superlink_main.create_app()
    monkeypatch.setattr(superlink_main, "_get_middleware", superlink_main._get_middleware)  # put back after
    control_middlewares_on_control_paths()
    return stock, superlink_main.create_app()


def test_the_control_middlewares_are_wrapped_in_place_and_nothing_else(monkeypatch: Any) -> None:
    stock, scoped = stock_and_scoped(monkeypatch)
    before = [m.cls for m in stock.user_middleware]
    after = [m.kwargs.get("inner", m.cls) if m.cls is ControlPathsOnly else m.cls for m in scoped.user_middleware]
    assert after == before
    wrapped = {m.kwargs["inner"].__name__ for m in scoped.user_middleware if m.cls is ControlPathsOnly}
    assert wrapped == {"ControlSensitiveResponseMiddleware", "ControlEventLogMiddleware",
                       "ControlLicenseMiddleware", "ControlAuthenticationMiddleware"}


def test_every_request_is_answered_as_by_flowers_own_stack(monkeypatch: Any) -> None:
    import httpx

    stock, scoped = stock_and_scoped(monkeypatch)
    requests = [("POST", "/v1/fleet/send-node-heartbeat", b"not protobuf"), ("POST", "/v1/fleet/pull-messages", b""),
                ("POST", "/v1/control/list-runs", b"x"), ("POST", "/v1/control/get-auth-tokens", b""),
                ("POST", "/v1/control/get-login-details", b""), ("GET", "/v1/runtime/nope", b""),
                ("GET", "/health", b""),
                # Control paths only after decoding, or not at all: still answered alike (httpx refuses
                # longer URLs, and it resolves dot segments itself: those are in the next test)
                ("POST", "//v1/control/list-runs", b"x"), ("POST", "/v1/%63ontrol/list-runs", b"x"),
                ("POST", "/v1/control/" + "a" * 60_000, b"")]

    async def answers(app: Any) -> list[tuple[int, str, str | None]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://superlink") as client:
            out = []
            for method, path, body in requests:
                r = await client.request(method, path, content=body,
                                         headers={"content-type": "application/protobuf"})
                out.append((r.status_code, r.text, r.headers.get("cache-control")))
            return out

    got, expected = asyncio.run(answers(scoped)), asyncio.run(answers(stock))
    assert got == expected
    assert expected[3][2] == "no-store"  # a sensitive Control route: its middleware still ran


def test_the_wrapped_middleware_runs_for_control_paths_only() -> None:
    ran: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append("app")

    class Inner:
        def __init__(self, app: Any, **kwargs: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            ran.append("inner")
            await self.app(scope, receive, send)

    wrapped = ControlPathsOnly(app, inner=Inner)
    for path in ("/v1/fleet/pull-messages", "/v1/control/list-runs", "/v1/controlx", "/v1/runtime/get-run"):
        asyncio.run(wrapped({"type": "http", "path": path}, None, None))  # type: ignore[arg-type]
    assert ran == ["app", "inner", "app", "app", "app"]  # the control path: inner, then on to the app


def test_the_wrapper_takes_a_raw_path_for_control_exactly_as_flowers_middlewares_do() -> None:
    from flwr.superlink.routers.control.middlewares import _is_control_path

    ran: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(False)

    class Inner:
        def __init__(self, app: Any, **kwargs: Any) -> None:
            pass

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            ran.append(True)

    wrapped = ControlPathsOnly(app, inner=Inner)
    paths = ["/v1/control/list-runs", "//v1/control/list-runs", "/v1/fleet/../control/list-runs", "/v1/control",
             "/V1/CONTROL/list-runs", "/v1/control/" + "a" * 10_000_000, "", "/v1/control/\x00", "v1/control/x"]
    for path in paths:
        asyncio.run(wrapped({"type": "http", "path": path}, None, None))  # type: ignore[arg-type]
    assert ran == [_is_control_path(p) for p in paths]


def test_a_flower_whose_sensitive_routes_leave_the_control_api_is_refused(monkeypatch: Any) -> None:
    import pytest
    from flwr.superlink.routers.control import middlewares

    monkeypatch.setattr(middlewares, "CONTROL_SENSITIVE_ROUTE_KEYS", frozenset({("POST", "/v1/fleet/secret")}))
    with pytest.raises(RuntimeError, match="Control API"):
        control_middlewares_on_control_paths()
