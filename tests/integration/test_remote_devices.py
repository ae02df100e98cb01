"""Devices on other hosts: ten SuperNodes in network namespaces of their own join a production-profile run.

The server runs ``fl-app run profile=production`` as the README's "SuperNodes on
other machines" says: the SuperLink's Fleet API and a Kafka listener for devices
on an address the device network reaches (a bridge, 10.231.x.1), one local
device. Ten namespaces stand for ten hosts, each on the bridge by a veth pair,
each holding only what the README says to copy (the CA certificate, its own
SuperNode key, its own Kafka login), each running the README's stock
``flower-supernode`` command with its own runtime port 9094 (each host has its
own loopback). Over TLS, with SuperNode authentication, Kafka SASL/SCRAM and ACLs:

- all ten remote devices train and are aggregated into global models;
- one host's link is cut (its veth down, a cable pulled): the SuperLink deems
  its node offline, the rounds go on with the others and never count it;
- the link comes back: the same SuperNode is online again and its device is in a
  later round (its windows waited in Kafka).

What is lost: nothing (every global model adds up to the local updates stored for
it); duplicated: nothing (no local update counted in two rounds). Needs root
(``ip netns``); traffic stays on the bridge and loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core import kafka_auth
from core.certs import CertPaths
from core.config import PROJECT_ROOT, load_config
from core.services.runner import free_port
from core.storage import Storage
from fl_app.federation import deployment, lineage, settings
from tests.integration.test_federation import check_consistent
from tests.support.processes import kill_processes_under, live_processes_under
from tests.support.stack import private_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FL_APP = Path(sys.executable).parent / "fl-app"
REMOTE = 10
RUNTIME_PORT = 9094  # the README's; every host has a loopback of its own


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    device: int
    ns: str
    link: str  # the veth end on the server's side: down is a pulled cable
    home: Path  # what this host holds


@pytest.fixture
def device_lan() -> Iterator[tuple[str, list[str], list[str]]]:
    """``(server address, namespaces, server-side links)``: a bridge with this host at .1 and ten
    namespaces on it, whose only way out is their veth to the bridge."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:5]
    subnet = random.randrange(16, 250)
    bridge, server = f"flbr{tag}", f"10.231.{subnet}.1"
    spaces, links = [f"flhost-{tag}-{i}" for i in range(REMOTE)], [f"flv{tag}{i}" for i in range(REMOTE)]
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{server}/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, (ns, link) in enumerate(zip(spaces, links, strict=True)):
            ip("netns", "add", ns)
            ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", link, "master", bridge, "up")
            ip("netns", "exec", ns, "ip", "addr", "add", f"10.231.{subnet}.{10 + i}/24", "dev", "eth0")
            ip("netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield server, spaces, links
    finally:
        for ns in spaces:
            kill_all_in(ns)  # whatever a host still runs (a SuperExec, a ClientApp)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)  # its veth goes along
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in left for ns in spaces), left


def copy_private(source: Path, target: Path) -> None:
    shutil.copy(source, target)
    target.chmod(0o600)


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(2)
    return time.monotonic() - started


def test_ten_devices_on_other_hosts_aggregate_over_tls_and_a_cut_link_is_a_device_away(
        device_lan: tuple[str, list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, spaces, links = device_lan
    fleet_port = free_port()
    overrides = [
        *private_overrides(tmp_path), "profile=production",
        # The README's steps: an address the other hosts reach for the SuperLink and for Kafka.
        f"fl.superlink_address={server}:{fleet_port}", f"fl.control_address=127.0.0.1:{free_port()}",
        f"kafka.device_bootstrap_servers={server}:{free_port()}",
        f"fl.security.hostnames=[localhost,127.0.0.1,{server}]", "fl.devices=1",
        # Short intervals; the rest of the production profile as it is.
        "stream.dataset_records=20000", "stream.records_per_second=60", "stream.batch_size=10",
        "fl.local_training_interval_seconds=5", "fl.global_update_interval_minutes=0.25",
        "spark.scorer.enabled=false", "spark.batch.enabled=false", "superset.enabled=false"]
    monkeypatch.setenv("FL_APP_API_KEY", "remote-devices-" + uuid.uuid4().hex[:8])  # production wants one
    env = dict(os.environ)
    cfg = load_config(overrides)
    every = settings.every_device(cfg)
    local, remote = every[:1], every[1:1 + REMOTE]
    hosts = [Host(d, ns, link, tmp_path / f"host-{d}") for d, ns, link in zip(remote, spaces, links, strict=True)]
    certs = CertPaths(Path(cfg.fl.security.certs_dir))
    server_log = tmp_path / "logs" / "global_server.log"

    def fl_app(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True, timeout=300,
                              env=env, cwd=PROJECT_ROOT)

    def supernode(host: Host) -> subprocess.Popen:
        """The README's command on another host, with what it copied from the server."""
        login = json.dumps(str(host.home / f"device-{host.device}.json"))
        argv = ["flower-supernode", "--superlink", f"{server}:{fleet_port}",
                "--root-certificates", str(host.home / "ca.crt"),
                "--auth-supernode-private-key", str(host.home / f"device-{host.device}.key"),
                "--node-config", f"device-id={host.device} {kafka_auth.KAFKA_CREDENTIALS}={login}",
                "--port", str(RUNTIME_PORT)]
        host_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(host.home),
                    "FLWR_HOME": str(host.home / ".flwr"), "FLWR_TELEMETRY_ENABLED": "0"}
        with (host.home / "supernode.log").open("a") as out:
            return subprocess.Popen(["ip", "netns", "exec", host.ns, "env", "-i", *[f"{k}={v}" for k, v in
                                                                                    host_env.items()], *argv],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=host.home, start_new_session=True)

    def nodes() -> dict[str, str]:
        """The SuperLink's nodes' status by node id, asked on the server's loopback."""
        proc = subprocess.run([deployment._bin("flwr"), "supernode", "ls", deployment.FEDERATION, "--format", "json"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **deployment._env(cfg)})
        try:
            return {n.get("node-id", ""): n.get("status", "") for n in json.loads(proc.stdout).get("nodes", [])}
        except ValueError:
            return {}

    def status(host: Host) -> str | None:
        """Its node's status on the SuperLink; None until its SuperNode logged its id."""
        found = re.findall(r"SuperNode ID: (\d+)", (host.home / "supernode.log").read_text())
        return nodes().get(found[-1]) if found else None

    store: Storage | None = None  # once MongoDB runs
    procs: dict[int, subprocess.Popen] = {}
    try:
        up = fl_app("run")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(lambda: all(certs.supernode_key(h.device).exists() and
                             kafka_auth.device_credentials_file(cfg.kafka, h.device).exists() for h in hosts)
                 and "online" in nodes().values(), 180, "the server's keys, logins, SuperLink and local device")

        for host in hosts:  # what each host is given: nothing of the server's but its own keys and the CA
            host.home.mkdir()
            shutil.copy(certs.ca_cert, host.home / "ca.crt")
            copy_private(certs.supernode_key(host.device), host.home / f"device-{host.device}.key")
            copy_private(kafka_auth.device_credentials_file(cfg.kafka, host.device),
                         host.home / f"device-{host.device}.json")
        procs.update({h.device: supernode(h) for h in hosts})
        wait_for(lambda: all(status(h) == "online" for h in hosts), 180,
                 "the ten hosts' SuperNodes online", hosts[0].home / "supernode.log")

        store = db = Storage.from_config(cfg.mongo)

        def devices_in_rounds(since: datetime | None = None) -> set[int]:
            query = {"created_at": {"$gt": since}} if since else {}
            return {d for g in db.global_model.find(query, {"device_ids": 1}) for d in g["device_ids"]}

        joined = wait_for(lambda: set(remote) <= devices_in_rounds(), 420, "every remote device in a global round",
                          server_log)

        # One host's cable is pulled.
        away = hosts[3]
        ip("link", "set", away.link, "down")
        cut_at = datetime.now(UTC)
        offline = wait_for(lambda: status(away) not in ("online", None), 240,
                           f"device {away.device}'s node offline after its link went down")
        offline_at = datetime.now(UTC)
        wait_for(lambda: db.global_model.count_documents({"created_at": {"$gt": offline_at}}) >= 2, 180,
                 "two rounds without the host that is away", server_log)
        after_cut = list(db.global_model.find({"created_at": {"$gt": offline_at}}, {"weights": 0}))
        assert all(away.device not in g["device_ids"] and g["num_devices"] >= 3 for g in after_cut), after_cut
        assert procs[away.device].poll() is None  # the host lives on, cut off, and keeps trying

        # The cable is back: the same SuperNode comes online and its device trains again.
        ip("link", "set", away.link, "up")
        back_at = datetime.now(UTC)
        back = wait_for(lambda: status(away) == "online", 240,
                        f"device {away.device}'s node online again", away.home / "supernode.log")
        wait_for(lambda: away.device in devices_in_rounds(back_at), 300,
                 f"device {away.device} in a round after its link came back", server_log)
        assert all(p.poll() is None for p in procs.values())  # no host's SuperNode gave up

        # The hosts go; one local device cannot make a round (>= 3), so what is stored stays as it is.
        stop_hosts(procs, spaces)
        time.sleep(2)
        globals_ = check_consistent(db)  # every round adds up to its local updates: nothing lost, none twice
        windows = [(u["device_id"], u["window_start"], u["window_end"])
                   for u in db.local_models.find({"window_start": {"$ne": None}}, {"weights": 0})]
        assert len(set(windows)) == len(windows)  # no device's window trained into two updates
        assert {d for g in globals_ for d in g["device_ids"]} >= set(remote) | set(local)
        assert [g["round"] for g in globals_] == list(range(1, len(globals_) + 1))
        # Every window record consumed is in one stored update or one left-out reply, across the cut link
        # (a reply lost on it is read again: server/positions.py).
        report = lineage.check(db)
        assert report.ok and report.without_source == 0, report.to_json()
        print(f"\nlineage: {report.to_json()}")
        print(f"\nremote devices: {len(remote)} online, all in a round {joined:.0f} s after they joined; "
              f"link cut at {cut_at:%H:%M:%S}: offline in {offline:.0f} s, {len(after_cut)} rounds without it; "
              f"back online {back:.0f} s after the link; {len(globals_)} rounds, {len(windows)} local updates; "
              f"{db.device_data.count_documents({})} readings stored")
    finally:
        stop_hosts(procs, spaces)
        down = fl_app("stop")
        if store is not None:
            store.close()
    assert down.returncode == 0, down.stdout + down.stderr
    assert not live_processes_under(tmp_path), kill_processes_under(tmp_path)


def stop_hosts(procs: dict[int, subprocess.Popen], spaces: list[str]) -> None:
    """Everything the hosts run ends (their SuperNodes, SuperExecs and ClientApps)."""
    for ns in spaces:
        kill_all_in(ns)
    for proc in procs.values():
        proc.wait(timeout=10)


def kill_all_in(ns: str) -> None:
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
