"""From a device's network, the SuperLink offers its Fleet API and nothing else (fl_app/federation/superlink.py).

A network namespace of the test's own (a veth pair, 10.203.x.0/30) stands for a
device network. A host in it holds what a device holds (the CA certificate and
its own SuperNode key): its SuperNode connects and goes online, but it cannot
list runs, stop one or register a key, neither with the `flwr` CLI nor by
calling the Control or Runtime API's paths by hand on the fleet port, and the
Control API's own port is not there at all (loopback only). Needs root (``ip
netns``); traffic goes only to the namespace's addresses and to loopback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import certs
from core.config import AppConfig, load_config
from core.services.runner import free_port
from fl_app.federation import deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICE = 7


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def device_network() -> Iterator[tuple[str, str]]:
    """``(namespace, host address)``: a namespace whose only way out is a veth to this host's end."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"fltest-{tag}", f"flh{tag}", f"fln{tag}"
    subnet = random.randrange(16, 250)
    host_ip, ns_ip = f"10.203.{subnet}.1", f"10.203.{subnet}.2"
    try:
        ip("netns", "add", ns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_end)
        ip("netns", "exec", ns, "ip", "link", "set", ns_end, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)  # takes its veth end along
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def in_namespace(ns: str, argv: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)


PROBE = textwrap.dedent("""
    import http.client, json, socket, ssl, sys
    host, fleet, control, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    def tcp(port):
        try:
            socket.create_connection((host, port), timeout=5).close()
            return True
        except OSError:
            return False
    def post(path):
        conn = http.client.HTTPSConnection(host, fleet, timeout=10, context=ssl.create_default_context(cafile=ca))
        conn.request("POST", path, body=b"", headers={"content-type": "application/protobuf"})
        return conn.getresponse().status
    paths = ["/v1/control/list-runs", "/v1/control/stop-run", "/v1/control/start-run",
             "/v1/control/register-node", "/v1/control/list-nodes", "/v1/runtime/get-nodes",
             "/v1/runtime/acquire-task", "/v1/fleet/../control/list-runs", "/v1/fleet/get-run"]
    print(json.dumps({"tcp_fleet": tcp(fleet), "tcp_control": tcp(control),
                      "status": {p: post(p) for p in paths}}))
""")


def flwr(cfg: AppConfig, *args: str, home: Path | None = None, ns: str | None = None) -> tuple[int, dict]:
    env = {**os.environ, **deployment._env(cfg), **({"FLWR_HOME": str(home)} if home else {})}
    argv = [deployment._bin("flwr"), *args, "--format", "json"]
    proc = in_namespace(ns, argv, env) if ns else subprocess.run(argv, capture_output=True, text=True, env=env,
                                                                  timeout=90)
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = {"success": False, "output": (proc.stdout + proc.stderr)[-800:]}
    return proc.returncode, reply


def refused(result: tuple[int, dict]) -> bool:
    code, reply = result
    return code != 0 or reply.get("success") is False


def test_a_device_network_reaches_the_fleet_api_and_no_control_plane(device_network: tuple[str, str],
                                                                     tmp_path: Path) -> None:
    ns, host_ip = device_network
    fleet_port = free_port()
    cfg = load_config([
        f"paths.home={tmp_path}", f"fl.superlink_address={host_ip}:{fleet_port}",
        f"fl.control_address=127.0.0.1:{free_port()}", "fl.security.tls=true", "fl.security.supernode_auth=true",
        f"fl.security.certs_dir={tmp_path / 'certs'}", f"fl.security.hostnames=[localhost,127.0.0.1,{host_ip}]"])
    paths = certs.CertPaths(tmp_path / "certs")
    certs.make(paths.root, cfg.fl.security.hostnames, [DEVICE, DEVICE + 1])
    control_port = int(deployment.control_address(cfg).rsplit(":", 1)[1])

    # What a device holds: the CA's certificate and its own key; nothing else.
    device = tmp_path / "device"
    (device / "flwr").mkdir(parents=True)
    shutil.copy(paths.ca_cert, device / "ca.pem")
    shutil.copy(paths.supernode_key(DEVICE), device / "device.key")
    shutil.copy(paths.supernode_public_key(DEVICE + 1), device / "another.pub")  # a key it would like registered

    def point_flwr_at(address: str) -> None:
        (device / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "{deployment.FEDERATION}"\n\n[superlink.{deployment.FEDERATION}]\n'
            f'address = "{address}"\nroot-certificates = "{device / "ca.pem"}"\n')

    superlink = deployment.superlink_process(cfg)
    node: subprocess.Popen | None = None
    try:
        superlink.start()
        deployment.write_flwr_config(cfg)
        assert flwr(cfg, "supernode", "register", str(paths.supernode_public_key(DEVICE)), deployment.FEDERATION,
                    "--name", f"device-{DEVICE}")[1].get("success"), "the host registers the device on loopback"

        probe = in_namespace(ns, [sys.executable, "-c", PROBE, host_ip, str(fleet_port), str(control_port),
                                  str(device / "ca.pem")], dict(os.environ))
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        assert seen["tcp_fleet"] and not seen["tcp_control"]  # the Control API's port is not on this network
        fleet_only = seen["status"].pop("/v1/fleet/get-run")
        assert set(seen["status"].values()) == {404}, seen  # no control or runtime path answers on the fleet port
        assert fleet_only != 404  # the Fleet API does (and wants a node's signature)

        # The flwr CLI from the device network: the fleet address is no Control API, the control one is not there.
        for address in (f"{host_ip}:{fleet_port}", f"{host_ip}:{control_port}"):
            point_flwr_at(address)
            assert refused(flwr(cfg, "ls", deployment.FEDERATION, home=device / "flwr", ns=ns))
            assert refused(flwr(cfg, "stop", "1", deployment.FEDERATION, home=device / "flwr", ns=ns))
            assert refused(flwr(cfg, "supernode", "register", str(device / "another.pub"), deployment.FEDERATION,
                                home=device / "flwr", ns=ns))
            assert refused(flwr(cfg, "supernode", "ls", deployment.FEDERATION, home=device / "flwr", ns=ns))

        # Its own SuperNode, with its own key, does connect through the Fleet API.
        with (tmp_path / "supernode.log").open("w") as out:
            node = subprocess.Popen(
                ["ip", "netns", "exec", ns, deployment._bin("flower-supernode"), "--root-certificates",
                 str(device / "ca.pem"), "--auth-supernode-private-key", str(device / "device.key"),
                 "--superlink", f"{host_ip}:{fleet_port}", "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"device-id={DEVICE}", "--isolation", "process"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **deployment._env(cfg)},
                start_new_session=True)
        deadline, nodes = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            nodes = flwr(cfg, "supernode", "ls", deployment.FEDERATION)[1].get("nodes", [])
            if [n.get("status") for n in nodes] == ["online"]:
                break
            time.sleep(1)
        assert [n.get("status") for n in nodes] == ["online"], (tmp_path / "supernode.log").read_text()[-2000:]
        # Nothing the device network tried took effect: one node (its own), no run, no second key.
        code, runs = flwr(cfg, "ls", deployment.FEDERATION)
        assert code == 0 and runs.get("runs") == [], runs
    finally:
        if node is not None:
            os.killpg(node.pid, 9)
            node.wait(timeout=10)
        superlink.stop()
