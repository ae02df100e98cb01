"""Federated learning on real Kafka and MongoDB-wire servers: the ServerApp and ClientApps on
Flower's simulation runtime with all 53 devices, fed by their own window partitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from core import dataset, services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.records import window_partitions, window_record
from fl_app.federation import lineage
from tests.support.stack import federation_ports, tenant_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FL_APP = Path(sys.executable).parent / "fl-app"
READINGS_PER_WINDOW = 8


def fl_overrides(stack: AppConfig, home: Path, tag: str) -> list[str]:
    return [*tenant_overrides(stack, home, tag), "stream.dataset_records=20000"]


def publish_windows(cfg: AppConfig, devices: list[int], per_device: int, skip: int = 0) -> int:
    """Window records as the Flink job writes them, ``per_device`` for each device, in its partition,
    from each device's ``skip``-th window of readings on."""
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    partition = window_partitions(dataset.device_ids(cfg.stream, cfg.paths.cache_dir))
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    total = 0
    for device in devices:
        rows = frame[frame["device_id"] == device].iloc[
            skip * READINGS_PER_WINDOW:(skip + per_device) * READINGS_PER_WINDOW]
        readings = [{"event_id": f"0-{r['seq']}", "device_id": device, "event_time": "2026-11-28T00:00:00+00:00",
                     "source_time": r["source_time"].isoformat(), "loop": 0, "seq": r["seq"],
                     **{k: r[k] for k in ("temperature", "humidity", "light", "voltage")}}
                    for r in rows.to_dict("records")]
        for i in range(0, len(readings), READINGS_PER_WINDOW):
            chunk = readings[i:i + READINGS_PER_WINDOW]
            record = window_record(device, "2026-11-28T00:00:00.000+00:00", "2026-11-28T00:00:30.000+00:00", chunk)
            producer.produce(cfg.kafka.topics.windows.name, key=str(device), value=json.dumps(record),
                             partition=partition[device])
            total += len(chunk)
    assert producer.flush(30) == 0
    return total


def test_simulation_runtime_with_53_devices(stack: AppConfig, tmp_path: Path) -> None:
    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.runtime=simulation", "fl.devices=53",
                 "fl.local_training_interval_seconds=4", "fl.global_update_interval_minutes=0.25",
                 "fl.duration_seconds=100"]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = dataset.device_ids(cfg.stream, cfg.paths.cache_dir)
    assert len(devices) == 53
    published = publish_windows(cfg, devices, per_device=2)
    proc = subprocess.Popen([str(FL_APP), "fl", "simulate", *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"}, cwd=PROJECT_ROOT)
    with storage.Storage.from_config(cfg.mongo) as store:  # more windows once the first round is in
        deadline = time.monotonic() + 90
        while store.global_model.count_documents({}) == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
    published += publish_windows(cfg, devices, per_device=1, skip=2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    log = (tmp_path / "logs" / "global_server.log").read_text()
    assert "53 devices online" in log, log[-2000:]

    with storage.Storage.from_config(cfg.mongo) as store:
        globals_ = list(store.global_model.find({}, sort=[("round", 1)]))
        ticks = list(store.fl_rounds.find({}, sort=[("at", 1)]))
        locals_ = list(store.local_models.find({}))
    assert len(globals_) >= 2, ticks
    assert [g["round"] for g in globals_] == list(range(1, len(globals_) + 1))
    assert all(g["num_devices"] >= cfg.fl.min_devices_for_aggregation for g in globals_)
    by_round = defaultdict(list)
    for doc in locals_:
        by_round[doc["aggregated_into"]].append(doc)
    for g in globals_:  # each global model is exactly its local updates
        mine = by_round[g["round"]]
        assert sorted({d["device_id"] for d in mine}) == g["device_ids"]
        assert sum(d["num_examples"] for d in mine) == g["num_examples"]
        assert all(d["round"] < g["round"] for d in mine)  # trained from an earlier global model
        assert np.isfinite(storage.decode_weights(g["weights"])[0]).all() and np.isfinite(g["threshold"])
        assert isinstance(g["created_at"], datetime)
    # Every reading published was trained on exactly once, by its own device.
    assert sum(g["num_examples"] for g in globals_) == published
    assert {d["device_id"] for d in locals_} == set(devices)
    assert {t["status"] for t in ticks} <= {"aggregated", "skipped"}


def check_consistent(store: storage.Storage) -> list[dict]:
    """Every global model adds up to the local updates stored for it; returns the global models."""
    globals_ = list(store.global_model.find({}, sort=[("round", 1)]))
    by_round = defaultdict(list)
    for doc in store.local_models.find({}):
        by_round[doc["aggregated_into"]].append(doc)
    assert set(by_round) <= {g["round"] for g in globals_}  # no local update points at a missing round
    for g in globals_:
        mine = by_round[g["round"]]
        assert sorted({d["device_id"] for d in mine}) == g["device_ids"]
        assert sum(d["num_examples"] for d in mine) == g["num_examples"] > 0
        assert all(d["round"] < g["round"] for d in mine)
        assert all(np.isfinite(w).all() for w in storage.decode_weights(g["weights"])) and np.isfinite(g["threshold"])
    return globals_


def test_deployment_with_flink_and_6_supernodes(stack: AppConfig, tmp_path: Path) -> None:
    """Real Kafka, MongoDB-wire server, Flink job, SuperLink and 6 SuperNodes (one of them sends NaN
    weights), second-scale intervals; then a SuperNode is killed, then the ServerApp."""
    from core.services.runner import ManagedProcess
    from fl_app.federation import deployment, settings

    # 6 devices: after the NaN device and the killed one, 4 remain for rounds of >= 3. With 3, one
    # device's gap in the data set (up to 2 min of replay) stalled the rounds once.
    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.devices=6",
                 "fl.local_training_interval_seconds=3", "fl.global_update_interval_minutes=0.15",
                 "flink.checkpoint_interval_ms=1000", "stream.records_per_second=60", "stream.batch_size=6",
                 *federation_ports()]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = settings.devices(cfg)
    chaos_device = devices[-1]

    def component(name: str, *command: str) -> ManagedProcess:
        return ManagedProcess(name=name, argv=[str(FL_APP), *command, *overrides], run_dir=tmp_path / ".run",
                              logs_dir=tmp_path / "logs", startup_timeout=5, stop_timeout=20)

    job, producer = component("flink_job", "flink"), component("kafka_producer", "produce")
    superlink = deployment.superlink_process(cfg)
    nodes = {d: deployment.supernode_process(cfg, i, d, "chaos=nan" if d == chaos_device else "")
             for i, d in enumerate(devices)}
    store = storage.Storage.from_config(cfg.mongo)

    def wait_for_rounds(n: int, timeout: float = 240) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            docs = list(store.global_model.find({}, {"weights": 0}, sort=[("round", 1)]))
            if len(docs) >= n:
                return docs
            time.sleep(1)
        log = tmp_path / "logs" / "global_server.log"
        pytest.fail(f"{n} global rounds not reached in {timeout:.0f}s:\n"
                    + (log.read_text()[-3000:] if log.exists() else "(no server log)"))

    try:
        superlink.start()
        for node in nodes.values():
            node.start()
            time.sleep(0.5)
        deployment.executor_process(cfg).start()  # fl.isolation=warm: it runs the SuperNodes' ClientApps
        deployment.submit(cfg)
        # No stream yet: the devices have nothing to train on, so ticks are skipped (and recorded).
        deadline = time.monotonic() + 120
        while not store.fl_rounds.find_one({"status": "skipped"}):
            assert time.monotonic() < deadline, "no skipped tick without data"
            time.sleep(1)
        job.start()
        producer.start()
        first = wait_for_rounds(2)
        assert all(g["num_devices"] >= 3 for g in first)

        nodes[devices[0]].kill()  # one device goes away: the others keep aggregating
        killed_at = datetime.now(first[0]["created_at"].tzinfo)
        after_kill = wait_for_rounds(len(first) + 2)
        late = [g for g in after_kill if g["created_at"] > killed_at + timedelta(seconds=10)]
        assert late and all(devices[0] not in g["device_ids"] for g in late)
        nodes[devices[0]].start()  # the device restarts: it trains on the windows that waited for it
        restarted_at = datetime.now(first[0]["created_at"].tzinfo)
        deadline = time.monotonic() + 180
        while not store.global_model.find_one({"created_at": {"$gt": restarted_at}, "device_ids": devices[0]}):
            assert time.monotonic() < deadline, "the restarted device in no round within 180 s"
            time.sleep(1)
        after_kill = list(store.global_model.find({}, {"weights": 0}, sort=[("round", 1)]))
        # Lineage, on the running federation: every window record a stored update trained on, once, none
        # consumed without a trace (the NaN device's rejected ones are recorded as left out, with their
        # source), each update in its one round, through the device's kill -9 and restart: the replies
        # lost with the SuperNode and those refused while the old node still held the device were read
        # again from the server's account (server/positions.py).
        report = lineage.check(store)
        assert report.ok, report.to_json()
        print(f"lineage after the SuperNode's kill and restart: {report.to_json()}")
        assert report.without_source == 0 and report.left_out > 0 and report.updates > 0

        serverapps = deployment.flwr_processes(deployment.flwr_home(cfg), ("flwr-serverapp",))
        assert len(serverapps) == 1
        os.kill(serverapps[0][0], signal.SIGKILL)  # the ServerApp dies mid-run
        last = max(g["round"] for g in after_kill)
        deployment.submit(cfg)  # a new run: its ServerApp resumes from MongoDB
        resumed = wait_for_rounds(len(after_kill) + 1)
        assert [g["round"] for g in resumed] == list(range(1, len(resumed) + 1))  # continued, none overwritten
        assert max(g["round"] for g in resumed) > last
        assert "start: global round " + str(last) in (tmp_path / "logs" / "global_server.log").read_text()

    finally:
        deployment.down(cfg)
        producer.stop()
        job.stop()

    globals_ = check_consistent(store)
    ticks = list(store.fl_rounds.find({}))
    # A ServerApp killed loses the replies it held since its last tick (their windows committed by the
    # devices); the next one tells each device to read from where the stored account ends, so those
    # records are trained on once all the same.
    report = lineage.check(store)
    store.close()
    assert report.ok, report.to_json()
    print(f"lineage after the ServerApp's kill: {report.to_json()}")
    assert all(chaos_device not in g["device_ids"] for g in globals_)  # the NaN device never counted
    rejected = [r for t in ticks for r in t["rejected"]]
    nan = [r for r in rejected if "not finite" in r["reason"]]
    assert nan and {r["device_id"] for r in nan} == {chaos_device}
    # The rest: the restarted SuperNode's replies while its old node held the device, and replies that did
    # not start where the server's account ended (after the SuperNode's and the ServerApp's restarts).
    others = [r["reason"] for r in rejected if r not in nan]
    assert all("claims it too" in why or "read again from there" in why for why in others), others
    assert any("read again from there" in why for why in others)
    skipped = [t for t in ticks if t["status"] == "skipped"]
    assert skipped and all("need 3" in t["reason"] for t in skipped)  # recorded, with the reason
    assert not deployment.flwr_processes(deployment.flwr_home(cfg))  # nothing of Flower left running


def test_tls_and_supernode_authentication(stack: AppConfig, tmp_path: Path) -> None:
    """fl.security on (as in the production profile): every SuperLink API speaks only TLS with our
    certificate, registered SuperNodes train and aggregate through it, an unregistered key is refused."""
    import http.client
    import ssl

    from core import certs
    from core.services.runner import free_port
    from fl_app.federation import deployment, settings

    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.devices=3",
                 "fl.security.tls=true", "fl.security.supernode_auth=true",
                 f"fl.security.certs_dir={tmp_path / 'certs'}",
                 "fl.local_training_interval_seconds=3", "fl.global_update_interval_minutes=0.1",
                 *federation_ports()]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = settings.devices(cfg)
    publish_windows(cfg, devices, per_device=2)
    host, port = cfg.fl.superlink_address.split(":")
    paths = certs.CertPaths(tmp_path / "certs")
    try:
        deployment.up(cfg, stagger_seconds=0.2)
        for private in (paths.ca_key, paths.superlink_key, paths.supernode_key(devices[0])):
            assert private.stat().st_mode & 0o077 == 0, private  # nobody else may read a private key

        # TLS only, with a certificate the CA vouches for, for the address we dial.
        verified = http.client.HTTPSConnection(host, int(port), timeout=10,
                                               context=ssl.create_default_context(cafile=str(paths.ca_cert)))
        verified.request("GET", "/")
        assert verified.getresponse().status < 500
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/")
            plain.getresponse()

        # A SuperNode whose key was never registered is refused and gives up.
        certs.make(tmp_path / "rogue", ["localhost"], [devices[0]])
        rogue_log = tmp_path / "rogue.log"
        with rogue_log.open("w") as out:  # a file, not a pipe: the SuperNode's detached SuperExec keeps it open
            rogue = subprocess.Popen(
                [deployment._bin("flower-supernode"), "--root-certificates", str(paths.ca_cert),
                 "--auth-supernode-private-key", str(certs.CertPaths(tmp_path / "rogue").supernode_key(devices[0])),
                 "--superlink", cfg.fl.superlink_address, "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"device-id={devices[0]}", "--max-retries", "2"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **deployment._env(cfg)})
            assert rogue.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in rogue_log.read_text()

        with storage.Storage.from_config(cfg.mongo) as store:
            deadline = time.monotonic() + 180
            while store.global_model.count_documents({}) == 0 and time.monotonic() < deadline:
                time.sleep(1)
            first = store.global_model.find_one({}, {"weights": 0})
        assert first is not None, (tmp_path / "logs" / "global_server.log").read_text()[-3000:]
        assert first["device_ids"] == devices  # all three registered devices trained, over TLS
        listed = subprocess.run([deployment._bin("flwr"), "supernode", "ls", deployment.FEDERATION, "--format", "json"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, **deployment._env(cfg)})
        statuses = sorted(n["status"] for n in json.loads(listed.stdout)["nodes"])
        # Every device of the data set is registered: those without a SuperNode here may join from elsewhere.
        others = len(settings.every_device(cfg)) - 3
        assert statuses == ["online"] * 3 + ["registered"] * others, listed.stdout
    finally:
        deployment.down(cfg)
    assert not deployment.flwr_processes(deployment.flwr_home(cfg))


def test_ten_supernodes_through_the_warm_executor(stack: AppConfig, tmp_path: Path) -> None:
    """fl.isolation=warm (the default): 10 SuperNodes forked from one launcher, with --isolation process,
    one executor forking their ClientApps. Every device's readings reach a global model; the executor is killed and
    restarted mid-run (pending tasks wait for it, nothing hangs); nothing is left running at the end."""
    from fl_app.federation import deployment, settings

    # min 1 device: the last devices' updates after the restart must not wait for two more devices.
    # TTL 20 s: a message held by a ClientApp that died with the executor is re-sent after 20 s, not 120.
    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.devices=10", "fl.isolation=warm",
                 "fl.min_devices_for_aggregation=1", "fl.message_ttl_seconds=20",
                 "fl.local_training_interval_seconds=3", "fl.global_update_interval_minutes=0.1",
                 *federation_ports()]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = settings.devices(cfg)
    published = publish_windows(cfg, devices, per_device=2)
    executor = next(p for p in deployment.processes(cfg) if p.name == "fl_executor")
    store = storage.Storage.from_config(cfg.mongo)

    def trained_readings(timeout: float) -> int:
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            total = sum(g["num_examples"] for g in store.global_model.find({}, {"num_examples": 1}))
            if total >= published:
                break
            time.sleep(1)
        return total

    try:
        deployment.up(cfg, stagger_seconds=0.2)
        assert trained_readings(180) == published, (tmp_path / "logs" / "global_server.log").read_text()[-3000:]
        devices_seen = {d for g in store.global_model.find({}) for d in g["device_ids"]}
        assert devices_seen == set(devices)

        pid = executor.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the executor dies; its running children follow it
        time.sleep(2)
        more = publish_windows(cfg, devices, per_device=1, skip=2)
        published += more
        executor.start()  # a new executor picks up the tasks the SuperNodes still hold
        assert trained_readings(180) == published, (tmp_path / "logs" / "global_server.log").read_text()[-3000:]
    finally:
        deployment.down(cfg)
    check_consistent(store)
    store.close()
    log = (tmp_path / "logs" / "fl_executor.log").read_text()
    assert "warm in" in log and "stopped:" in log, log[-2000:]
    launcher_log = (tmp_path / "logs" / "fl_supernodes.log").read_text()
    assert "10 SuperNodes forked" in launcher_log and "stopped" in launcher_log, launcher_log[-2000:]
    assert all("SuperNode ID" in (tmp_path / "logs" / "supernodes" / f"fl_supernode_{d}.log").read_text()
               for d in devices)  # each forked SuperNode registered, in its own log
    assert not deployment.flwr_processes(deployment.flwr_home(cfg),
                                     (*deployment.FLWR_PROCESSES, "clients.executor", "clients.supernodes"))
