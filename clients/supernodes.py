"""A light launch of many local SuperNodes: one parent imports Flower's SuperNode once and forks them.

A stock ``flower-supernode`` process is a fresh interpreter that imports
flwr, grpc, cryptography, SQLAlchemy ...: ~100 MB of private memory each,
5 GB for 53 devices. Forked from one parent that imported all that, a SuperNode
shares those pages (copy-on-write) and adds ~45 MB (measured with PSS, see
``benchmarks/fl_supernodes.py``).

Each child is an ordinary SuperNode as far as anyone can tell: Flower's own
``flower-supernode`` entry point with the usual flags, in a session of its
own, its output in its own log, its pid in its own pid file (the format of
:class:`core.services.runner.ManagedProcess`, so ``fl-app status`` and
``stop`` handle each device as before). The parent starts them staggered, reaps
them and logs how each ended; on SIGTERM it stops them all at once (SIGTERM,
then SIGKILL) and leaves.

    python -m clients.supernodes --spec .run/fl_supernodes.json

The spec is JSON: ``{"stagger_seconds": 0.2, "nodes": [{"name", "args" (the
flags after ``flower-supernode``), "pid_file", "log_file"}, ...]}``.

Each insecure SuperNode (the testing profile) gets its identity from here:
flwr refuses a SuperNode key with ``--insecure``, and a node then registers
with a key pair of its own making, which tells the ServerApp nothing. So the
parent makes each device's node a key pair, hands it to the child (in memory:
the private key is never written), which registers with it, and writes the
public keys by device to ``fl_device_keys.json`` beside the spec. The ServerApp
reads that file (``core.messages.ServerSettings.device_keys_file``) and takes a
node for the device whose key it holds, whatever its replies claim
(``server/admission.py``). With SuperNode authentication (production) the
operator's registered keys do this instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core import processes
from core.atomic import read_json, write_json
from core.messages import DEVICE_KEYS_FILE
from core.services.runner import pid_from_file, write_pid_file

log = logging.getLogger("clients.supernodes")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    args: list[str]  # flower-supernode's flags
    pid_file: str
    log_file: str


def load_spec(path: Path) -> tuple[list[NodeSpec], float]:
    raw = json.loads(path.read_text())
    return [NodeSpec(**node) for node in raw["nodes"]], float(raw.get("stagger_seconds", 0.2))


def save_spec(path: Path, nodes: Sequence[NodeSpec], stagger_seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stagger_seconds": stagger_seconds, "nodes": [vars(n) for n in nodes]}, indent=1))


def device_of(node: NodeSpec) -> int | None:
    """The ``device-id`` of the node's ``--node-config`` (None if it names none)."""
    args = node.args
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--node-config":
            for item in value.split():
                key, _, text = item.partition("=")
                if key == "device-id" and text.isdigit():
                    return int(text)
    return None


def needs_key(node: NodeSpec) -> bool:
    """An insecure node: it would register with a key of its own making (a secure one has the operator's)."""
    return "--insecure" in node.args and "--auth-supernode-private-key" not in node.args


def register_key(keys_file: Path, device: int, key: ec.EllipticCurvePrivateKey) -> None:
    """Add (or replace) ``device``'s public key in the file the ServerApp reads (PEM, as Flower's NodeInfo
    shows it), before its node registers with it."""
    keys = read_json(keys_file, {})
    keys[str(device)] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    write_json(keys_file, keys, mode=0o600)


def _use_key(key: ec.EllipticCurvePrivateKey) -> None:
    """Make the SuperNode in this process register with ``key``: flwr 1.42 makes an insecure node's key in
    ``fleet_http_connection`` with ``generate_key_pairs()`` (``supernode/fleet_http_connection.py``, where
    no key is given); this process is one node, so that function gives ours."""
    from flwr.supernode import fleet_http_connection

    if not hasattr(fleet_http_connection, "generate_key_pairs"):
        raise RuntimeError("flwr.supernode.fleet_http_connection.generate_key_pairs is gone: "
                           "this flwr cannot be given a node's key")
    fleet_http_connection.generate_key_pairs = lambda: (key, key.public_key())


@dataclass(frozen=True)
class Pulling:
    """How often a forked SuperNode asks the SuperLink for messages and says it is alive, and whom it
    tells when a message came."""

    seconds: float = 3.0  # between two pulls that found nothing (Flower's own wait is 3 s, not settable)
    wake_socket: str | None = None  # the executor's datagram socket (clients/executor.py); None: tell nobody
    heartbeat_seconds: float = 30.0  # Flower's HEARTBEAT_DEFAULT_INTERVAL, not settable either


FLOWER_PULL_WAIT = 3.0  # start_client_internal's `time.sleep(3)` after a pull that found nothing


def _pull_as(pulling: Pulling, runtime_port: int) -> None:
    """Wrap flwr 1.42's message pull in this SuperNode: after one that found nothing, wait
    ``pulling.seconds`` in all (an idle node pulled every 3 s, 18 requests/s for 53 nodes, each
    signed and checked: most of the SuperLink's idle CPU); after one that stored a message (so a task
    now waits at this node's Runtime API), send this node's runtime port to the executor, which then
    acquires it at once instead of polling every node (issue 22)."""
    import socket

    from flwr.supernode import start_client_internal as flower

    original = getattr(flower, "_pull_and_store_message", None)
    if original is None:
        raise RuntimeError("flwr.supernode.start_client_internal._pull_and_store_message is gone: "
                           "this flwr cannot be paced or announce its tasks")
    extra = max(0.0, pulling.seconds - FLOWER_PULL_WAIT)
    wake = pulling.wake_socket
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if wake else None

    def pull(**kwargs: Any) -> Any:
        run_id = original(**kwargs)
        if run_id is None:
            time.sleep(extra)
        elif out is not None and wake:
            with contextlib.suppress(OSError):  # no executor yet: its periodic full pass finds the task
                out.sendto(str(runtime_port).encode(), wake)
        return run_id

    flower._pull_and_store_message = pull  # type: ignore[assignment]


def _heartbeat_every(seconds: float) -> None:
    """Make this SuperNode's heartbeat interval ``seconds``: flwr 1.42 reads the constant
    ``HEARTBEAT_DEFAULT_INTERVAL`` where it sends a heartbeat (``supercore/heartbeat.py``, every
    0.8 x (interval - 5 s)) and where it tells the SuperLink the interval (``fleet_http_connection``),
    which deems a node offline after twice that. At 30 s, 53 nodes sent 2.6 heartbeats a second."""
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for module in (heartbeat, fleet_http_connection):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise RuntimeError(f"{module.__name__}.HEARTBEAT_DEFAULT_INTERVAL is gone: this flwr cannot be "
                               "given a heartbeat interval")
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


SERVER_TICK_SECONDS = 1.0


def _tick_server_every(seconds: float) -> None:
    """Make uvicorn's ``Server.main_loop`` wake every ``seconds`` instead of every 0.1 s. Each SuperNode
    serves its Runtime API with uvicorn, whose loop only refreshes the Date header (once a second) and
    checks whether to exit on those wakeups: 530 a second for 53 idle nodes, two thirds of an idle
    SuperNode's CPU (py-spy, issue 22). Requests are served by the event loop, not by the tick; a stop
    now takes up to ``seconds`` longer."""
    import asyncio

    import uvicorn

    if not (hasattr(uvicorn.Server, "main_loop") and hasattr(uvicorn.Server, "on_tick")):
        raise RuntimeError("uvicorn.Server.main_loop/on_tick are gone: this uvicorn's tick cannot be slowed")

    async def main_loop(self: uvicorn.Server) -> None:
        while not await self.on_tick(0):  # counter 0: every tick refreshes the Date header
            await asyncio.sleep(seconds)

    uvicorn.Server.main_loop = main_loop  # type: ignore[method-assign]


def runtime_port(node: NodeSpec) -> int | None:
    """The ``--port`` of the node's Runtime API (None if it names none)."""
    args = node.args
    return next((int(value) for flag, value in zip(args, args[1:], strict=False)
                 if flag == "--port" and value.isdigit()), None)


def _run_node(node: NodeSpec, entry_point: Callable[[], None], key: ec.EllipticCurvePrivateKey | None = None,
              pulling: Pulling | None = None) -> None:
    """What the forked child runs (:func:`core.processes.fork` gives it its own session, so stopping one
    device stops only that one, default signals and its exit code): own log and pid file, then Flower's
    SuperNode (registering with ``key``, if given)."""
    Path(node.log_file).parent.mkdir(parents=True, exist_ok=True)
    out = os.open(node.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    # New streams on the new descriptors (the inherited objects may not write to fd 1/2 at all).
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    os.write(1, f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} forked: flower-supernode "
                f"{' '.join(node.args)}\n".encode())
    write_pid_file(Path(node.pid_file), os.getpid())
    if key is not None:
        _use_key(key)
    port = runtime_port(node)
    if pulling is not None:
        _tick_server_every(SERVER_TICK_SECONDS)
        _heartbeat_every(pulling.heartbeat_seconds)
        if port is not None:
            _pull_as(pulling, port)
    sys.argv = ["flower-supernode", *node.args]
    entry_point()


class Launcher:
    """Forks one SuperNode per :class:`NodeSpec` from this (warm) process and watches them."""

    def __init__(self, entry_point: Callable[[], None], keys_file: Path | None = None,
                 pulling: Pulling | None = None) -> None:
        self.entry_point = entry_point  # tests swap in their own
        self.keys_file = keys_file  # where insecure nodes' public keys go (None: they make their own)
        self.pulling = pulling  # None: Flower's own pulls
        self.children: dict[int, NodeSpec] = {}

    def start(self, nodes: Sequence[NodeSpec], stagger_seconds: float, stop: Event) -> int:
        """Fork the nodes that are not already running; returns how many were forked."""
        forked = 0
        for node in nodes:
            if stop.is_set():
                break
            if pid_from_file(Path(node.pid_file)) is not None:
                log.info("%s already running", node.name)
                continue
            Path(node.pid_file).unlink(missing_ok=True)
            key, device = None, device_of(node)
            if self.keys_file is not None and device is not None and needs_key(node):
                key = ec.generate_private_key(ec.SECP384R1())  # the curve flwr's own node keys use
                register_key(self.keys_file, device, key)
            run = functools.partial(_run_node, node, self.entry_point, key, self.pulling)
            pid = processes.fork(run, new_session=True)
            self.children[pid] = node
            forked += 1
            self.reap()
            # All at once, many fail to register on a busy machine (stock processes: 28 of 53).
            stop.wait(stagger_seconds)
        return forked

    def reap(self) -> list[tuple[NodeSpec, int]]:
        """Collect the children that ended (no zombies); ``(node, exit code)`` of each."""
        return [ended for exit_ in processes.reap(self.children) if (ended := self._ended(exit_))]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every SuperNode at once, SIGKILL what is left after ``timeout``; reap them all."""
        for pid in processes.stop(self.children, timeout, poll=0.1, group=True, on_exit=self._ended):
            node = self.children.pop(pid)
            log.warning("%s (pid %d) killed: it did not stop in %.0fs", node.name, pid, timeout)

    def _ended(self, exit_: processes.Exit) -> tuple[NodeSpec, int] | None:
        """Forget a child that ended and log how; ``(node, exit code)``, None if that is unknown (it was
        collected by someone else)."""
        node, code = self.children.pop(exit_.pid), exit_.code
        if code is None:
            return None
        log.log(logging.INFO if code in (0, -signal.SIGTERM) else logging.WARNING, "%s (pid %d) ended: %s",
                node.name, exit_.pid, f"signal {-code}" if code < 0 else f"exit code {code}")
        return node, code


# What a SuperNode imports only once it runs (its Runtime API's app and uvicorn's protocol, loop and
# lifespan modules, chosen at start): 121 modules. Imported here, a child's PSS fell from 37.6 to 32.8 MB
# (10 nodes whose Runtime API is up, not yet reaching a SuperLink; issue 22).
CHILD_IMPORTS = ("flwr.supernode.main", "uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.protocols.http.auto",
                 "uvicorn.protocols.websockets.auto")


def _import_what_children_import() -> None:
    """Import in the parent what every child would import after the fork (shared pages, not 53 copies); a
    module this flwr or uvicorn no longer has is skipped (each child then imports what it needs)."""
    import importlib

    for name in CHILD_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as e:
            log.warning("not imported before the fork: %s (%s)", name, e)
    with contextlib.suppress(ImportError):  # the implementations uvicorn's "auto" picks when installed
        importlib.import_module("uvicorn.loops.uvloop")
        importlib.import_module("uvicorn.protocols.http.httptools_impl")
        importlib.import_module("uvicorn.protocols.websockets.websockets_impl")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="the JSON list of SuperNodes to start")
    parser.add_argument("--pull-seconds", type=float, default=FLOWER_PULL_WAIT,
                        help=f"seconds between a node's pulls when there is nothing (at least {FLOWER_PULL_WAIT:g})")
    parser.add_argument("--wake-socket", default=None, help="the executor's socket, told of each new task")
    parser.add_argument("--heartbeat-seconds", type=float, default=30.0,
                        help="a node's heartbeat interval (the SuperLink deems it offline after twice that)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler; no second copy
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    started = time.monotonic()
    from flwr.supernode.cli import flower_supernode  # the warm part: imported once, shared by every child

    _import_what_children_import()
    gc.collect()
    gc.freeze()  # a child's collections then leave the shared pages alone (no copy-on-write)

    nodes, stagger = load_spec(args.spec)
    log.info("flower-supernode imported in %.1fs; starting %d SuperNodes, %.2fs apart", time.monotonic() - started,
             len(nodes), stagger)
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    launcher = Launcher(flower_supernode, keys_file=args.spec.parent / DEVICE_KEYS_FILE,
                        pulling=Pulling(max(args.pull_seconds, FLOWER_PULL_WAIT), args.wake_socket,
                                        args.heartbeat_seconds))
    try:
        forked = launcher.start(nodes, stagger, stop)
        log.info("%d SuperNodes forked in %.1fs", forked, time.monotonic() - started)
        while launcher.children and not stop.is_set():
            launcher.reap()
            stop.wait(1.0)
    finally:
        launcher.stop()
        for node in nodes:
            if pid_from_file(Path(node.pid_file)) is None:
                Path(node.pid_file).unlink(missing_ok=True)
    log.info("stopped")


if __name__ == "__main__":
    main()
