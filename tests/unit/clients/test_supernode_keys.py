"""The SuperNode launcher gives each insecure node its device's key (issue 21: identity from the
transport): the key a forked node would register with is the one the launcher wrote, by device, for the
ServerApp; a node with the operator's key, or none named, gets none."""

from __future__ import annotations

import time
from pathlib import Path
from threading import Event

from cryptography.hazmat.primitives import serialization

from clients.supernodes import Launcher, NodeSpec, device_of
from core.atomic import read_json
from server.admission import key_der
from tests.support.waiting import wait_until


def says_its_key() -> None:
    """Stands in for flower-supernode: prints the public key flwr would register this node with."""
    from flwr.supernode import fleet_http_connection

    _, public = fleet_http_connection.generate_key_pairs()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    print("key:", pem.decode().replace("\n", "|"), flush=True)
    time.sleep(120)


def node(tmp_path: Path, name: str, *args: str) -> NodeSpec:
    return NodeSpec(name, list(args), str(tmp_path / f"{name}.pid"), str(tmp_path / "logs" / f"{name}.log"))


def logged_key(spec: NodeSpec) -> bytes | None:
    text = Path(spec.log_file).read_text() if Path(spec.log_file).exists() else ""
    line = next((x for x in text.splitlines() if x.startswith("key: ")), None)
    return line.removeprefix("key: ").replace("|", "\n").encode() if line else None


def test_each_insecure_node_registers_with_the_key_the_launcher_wrote_for_its_device(tmp_path: Path) -> None:
    keys_file = tmp_path / "fl_device_keys.json"
    nodes = [node(tmp_path, "a", "--insecure", "--node-config", "device-id=7 chaos=nan"),
             node(tmp_path, "b", "--insecure", "--node-config", "device-id=8"),
             node(tmp_path, "c", "--root-certificates", "ca.crt", "--auth-supernode-private-key", "k",
                  "--node-config", "device-id=9"),  # the operator's key: none of ours
             node(tmp_path, "d", "--insecure", "--node-config", "partition-id=0")]  # no device named
    assert [device_of(n) for n in nodes] == [7, 8, 9, None]
    launcher = Launcher(says_its_key, keys_file=keys_file)
    try:
        assert launcher.start(nodes, 0.01, Event()) == 4
        assert wait_until(lambda: all(logged_key(n) for n in nodes))
        written = read_json(keys_file, {})
        assert sorted(written) == ["7", "8"] and keys_file.stat().st_mode & 0o077 == 0
        for spec, device in zip(nodes[:2], ("7", "8"), strict=True):
            assert key_der(logged_key(spec) or b"") == key_der(written[device])  # the key it registers with
        own = {key_der(logged_key(n) or b"") for n in nodes[2:]}  # flwr's own making: not in the file
        assert own.isdisjoint({key_der(k) for k in written.values()}) and len(own) == 2
    finally:
        launcher.stop(timeout=5)
    assert not launcher.children


def test_without_a_keys_file_nodes_make_their_own_keys(tmp_path: Path) -> None:
    launcher = Launcher(says_its_key)
    spec = node(tmp_path, "a", "--insecure", "--node-config", "device-id=7")
    try:
        launcher.start([spec], 0.01, Event())
        assert wait_until(lambda: logged_key(spec) is not None)
    finally:
        launcher.stop(timeout=5)
    assert not list(tmp_path.glob("*.json"))
