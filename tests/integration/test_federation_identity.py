"""Identity from the transport on real servers (issue 21): a rogue SuperNode on the real SuperLink,
whose ClientApp poses as an honest device with a huge example count, is refused with its reason in
MongoDB's tick documents, while the honest devices aggregate every reading they were sent. The honest
nodes are the launcher's (clients/supernodes.py), registered with the keys it wrote for their devices;
the rogue is a stock SuperNode with a key of its own making."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from clients.client_app import FORGE
from core import services, storage
from core.config import AppConfig, load_config
from core.messages import DEVICE_KEYS_FILE, MAX_COUNT
from tests.integration.test_federation import check_consistent, fl_overrides, publish_windows
from tests.support.stack import federation_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_rogue_supernode_posing_as_a_device_is_refused_and_the_honest_ones_lose_nothing(
        stack: AppConfig, tmp_path: Path) -> None:
    """4 honest devices (warm launcher and executor, as `fl-app fl up` starts them); once they made a
    global round, a stock SuperNode joins with ``device-id`` of the first one and ``forge``: every
    reply it sends is that device's, well formed, with 2**31 - 1 readings. The tick documents hold
    each of its replies as refused, with the reason; every honest reading reaches a global model,
    and no global model counts the rogue's."""
    from core.services.runner import free_port
    from fl_app.federation import deployment, settings

    # min 1 device: a device whose first windows came late (a Kafka error reply) must not wait for two more.
    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.devices=4",
                 "fl.min_devices_for_aggregation=1", "fl.local_training_interval_seconds=3",
                 "fl.global_update_interval_minutes=0.1",
                 "fl.message_ttl_seconds=60",  # the rogue's stock ClientApp process starts cold
                 *federation_ports()]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = settings.devices(cfg)
    victim = devices[0]
    published = publish_windows(cfg, devices, per_device=2)
    store = storage.Storage.from_config(cfg.mongo)
    server_log = Path(cfg.paths.logs_dir) / "global_server.log"

    def wait_for(check: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(1)
        pytest.fail(f"{what} not within {timeout:.0f}s; server log:\n"
                    f"{server_log.read_text()[-4000:] if server_log.exists() else '(none)'}")

    def trained() -> int:
        return sum(g["num_examples"] for g in store.global_model.find({}, {"num_examples": 1}))

    def refusals() -> list[dict]:
        return [r for t in store.fl_rounds.find({}, {"rejected": 1}) for r in t["rejected"]]

    rogue_log = tmp_path / "rogue.log"
    rogue = None
    try:
        deployment.up(cfg, stagger_seconds=0.2)
        wait_for(lambda: trained() == published, 180, "the honest devices' first readings in a global model")
        with rogue_log.open("w") as out:  # a file, not a pipe: the SuperNode's detached SuperExec keeps it open
            rogue = subprocess.Popen(
                [deployment._bin("flower-supernode"), "--insecure", "--superlink", cfg.fl.superlink_address,
                 "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"device-id={victim} {FORGE}={MAX_COUNT}"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **deployment._env(cfg)})
        wait_for(lambda: any("registered key" in r["reason"] for r in refusals()), 240, "the rogue's reply refused")
        published += publish_windows(cfg, devices, per_device=1, skip=2)  # the honest go on meanwhile
        wait_for(lambda: trained() == published and len(refusals()) >= 2, 240,
                 "the honest devices' later readings and a second refusal")
        assert rogue.poll() is None  # the rogue was online all along: nothing refused it but the server
    finally:
        if rogue is not None:
            rogue.terminate()
            try:
                rogue.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rogue.kill()
                rogue.wait(timeout=10)
        deployment.down(cfg)

    rows = refusals()
    pattern = re.compile(rf"node \d+ holds no device's registered key \(its reply claims device {victim}\)")
    assert rows and all(r["device_id"] == victim and pattern.fullmatch(r["reason"]) for r in rows), rows
    made = check_consistent(store)
    assert trained() == published  # every honest reading counted once, none of the rogue's
    assert all(g["num_examples"] < MAX_COUNT and set(g["device_ids"]) <= set(devices) for g in made)
    log = server_log.read_text()
    assert sorted(json.loads((Path(cfg.paths.run_dir) / DEVICE_KEYS_FILE).read_text())) == sorted(map(str, devices))
    assert f"(its reply claims device {victim}); refused" in log
    print(f"\nrogue replies refused {len(rows)}; rounds {len(made)}; honest readings {published} all counted")
    store.close()
    assert not deployment.flwr_processes(deployment.flwr_home(cfg))
