"""``flower-superlink`` with the Fleet API on a device-facing address of its own, and nothing else there.

flwr 1.42 serves its Control API (``flwr run/ls/stop``, ``flwr supernode
register``), its Runtime API (what the ServerApp and SuperExec call) and its
Fleet API (what SuperNodes call) from one FastAPI app on one ``--host/--port``
(``flwr/superlink/main.py`` ``create_app`` includes all three routers;
``flwr/superlink/cli/flower_superlink.py`` ``_run_superlink_http_api`` runs it
on that one address; ``--control-api-address`` and ``--fleet-api-address`` are
deprecated and only start the legacy gRPC servers when the internal variables
``FLWR_INTERNAL_GRPC_*_API=1`` say so). The Control API has no authentication
in this distribution: its only plugin besides a no-op is OIDC, from the
enterprise package (``flwr/superlink/config_loader.py``
``load_control_authn_plugin``, "OIDC account authentication is unavailable").

So whoever reaches that port can register a key, list and stop runs, or
submit an app bundle that then runs on the server. This launcher builds the
very same app with flwr's own functions and serves it on two sockets of one
uvicorn server (one app, one lifespan, one TLS configuration):

- ``--host/--port`` (loopback only, ``fl.control_address``): every API;
- ``--fleet-host/--fleet-port`` (``fl.superlink_address``, what devices get):
  only ``/v1/fleet/...``; any other path is answered 404 before it reaches a
  router (:class:`FleetOnly`, by the local port the connection came in on).

It leans on two private names of flwr 1.42 (``_parse_superlink_lifespan_config``
and ``SuperLinkLifespan``); tests/integration/test_control_plane.py checks the
result from a separate network namespace.
"""

from __future__ import annotations

import argparse
import posixpath
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

FLEET_PREFIX = "/v1/fleet/"
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def fleet_path(path: str) -> bool:
    """A Fleet API path, and only that: no ``..`` or ``//`` that could lead elsewhere."""
    return path.startswith(FLEET_PREFIX) and posixpath.normpath(path) == path.rstrip("/")


class FleetOnly:
    """ASGI middleware: a request that came in on the fleet port may only call the Fleet API."""

    def __init__(self, app: ASGIApp, fleet_port: int) -> None:
        self.app, self.fleet_port = app, fleet_port

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        server = scope.get("server") or (None, None)
        if scope["type"] in ("http", "websocket") and server[1] == self.fleet_port and not fleet_path(scope["path"]):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"only the Fleet API is served on this address\n"})
            return
        await self.app(scope, receive, send)


CONTROL_PREFIX = "/v1/control/"


class ControlPathsOnly:
    """ASGI middleware: ``inner``, one of flwr's Control API middlewares, on Control API paths only.

    flwr 1.42 stacks eight ``BaseHTTPMiddleware`` layers on every request (``flwr/superlink/main.py``,
    ``_get_middleware``), each a task group and a memory stream per request: a third of the SuperLink's
    samples at rest (py-spy, issue 22), where almost every request is a device's Fleet API call. Its
    four Control ones pass any path outside ``/v1/control/`` straight on (``routers/control/
    middlewares.py``: ``_is_control_path``, and the sensitive routes are all under it), so for those
    paths this skips them instead, and the request takes the same way through everything else."""

    def __init__(self, app: ASGIApp, inner: Callable[..., ASGIApp], **kwargs: Any) -> None:
        self.app, self.inner = app, inner(app, **kwargs)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def control_middlewares_on_control_paths() -> None:
    """Make flwr's ``create_app`` put its Control API middlewares behind :class:`ControlPathsOnly`;
    RuntimeError if this flwr's names or routes are not the ones that makes safe."""
    from flwr.superlink import main as superlink_main
    from flwr.superlink.routers.control import middlewares as control
    from starlette.middleware import Middleware

    names = ("ControlSensitiveResponseMiddleware", "ControlEventLogMiddleware", "ControlLicenseMiddleware",
             "ControlAuthenticationMiddleware")
    if not (hasattr(superlink_main, "_get_middleware") and all(hasattr(control, n) for n in names)
            and all(path.startswith(CONTROL_PREFIX) for _, path in control.CONTROL_SENSITIVE_ROUTE_KEYS)):
        raise RuntimeError("flwr.superlink.main._get_middleware or its Control middlewares changed: "
                           "this flwr's middleware cannot be scoped to the Control API")
    classes = tuple(getattr(control, n) for n in names)
    original = superlink_main._get_middleware

    def scoped() -> list[Middleware]:
        # (starlette's middleware-factory protocol has no way to say "and a keyword `inner`")
        return [Middleware(ControlPathsOnly, inner=m.cls, **m.kwargs)  # type: ignore[arg-type]
                if m.cls in classes and not m.args else m for m in original()]

    superlink_main._get_middleware = scoped


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.cli.flower_superlink import SuperLinkLifespan, _parse_superlink_lifespan_config
    from flwr.superlink.main import create_app

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fleet-host", required=True)
    parser.add_argument("--fleet-port", type=int, required=True)
    ours, flower_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *flower_args]  # flwr parses its own flags from sys.argv
    config = _parse_superlink_lifespan_config()
    control_middlewares_on_control_paths()
    if ours.fleet_port == config.port:
        raise SystemExit("--fleet-port must differ from --port (the Control and Runtime APIs' port)")
    app = FleetOnly(create_app(config, SuperLinkLifespan), ours.fleet_port)
    # No access log: a line per request is a line per pulled object, message and heartbeat of every
    # device (~25 a second for 53 devices at rest, issue 22); errors and Flower's own events stay logged.
    server = uvicorn.Server(uvicorn.Config(
        app=app, host=config.host, port=config.port, reload=False, access_log=False, workers=1,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile))
    print(f"SuperLink: Control and Runtime APIs on {config.host}:{config.port}, "
          f"Fleet API only on {ours.fleet_host}:{ours.fleet_port}", flush=True)
    server.run(sockets=[listen(config.host, config.port), listen(ours.fleet_host, ours.fleet_port)])


if __name__ == "__main__":
    main()
