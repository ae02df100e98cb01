"""No two settings of a run on this machine give the same port, in any profile and group option."""

from __future__ import annotations

import itertools

import pytest

from core.config import ConfigError, load_config
from fl_app import pipeline, ports

PRODUCTION_KEY = "api.api_key=a-test-key-of-16-chars"  # production refuses to start without one
GROUPS = {"flink": ("minicluster", "cluster"), "kafka": ("local", "cluster"), "spark": ("local", "cluster")}


@pytest.mark.parametrize("profile", ["testing", "production"])
@pytest.mark.parametrize("choice", list(itertools.product(*GROUPS.values())), ids="-".join)
def test_the_defaults_give_every_listener_a_port_of_its_own(profile: str, choice: tuple[str, ...]) -> None:
    overrides = [f"profile={profile}", PRODUCTION_KEY, *(f"{g}={c}" for g, c in zip(GROUPS, choice, strict=True))]
    cfg = load_config(overrides)
    listeners = ports.local_listeners(cfg)
    assert ("fl.control_address", 9090) in listeners and len(listeners) >= 53 + 6
    assert ports.clashes(cfg) == []


def test_a_clash_is_named_and_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the first `make run` did (the Control API at the Fleet API's port + 1, Kafka's 9092).
    cfg = load_config(["fl.control_address=127.0.0.1:9092"])
    assert ports.clashes(cfg) == ["9092: kafka.bootstrap_servers and fl.control_address"]
    monkeypatch.setattr(pipeline.services, "up", lambda _: pytest.fail("started services despite the clash"))
    with pytest.raises(ConfigError, match="9092: kafka.bootstrap_servers and fl.control_address"):
        pipeline.run(cfg)


def test_ranges_clash_too() -> None:
    # SuperNode 1 of 53 at base + 1 = 8000, the API's port.
    assert ports.clashes(load_config(["fl.supernode_base_port=7999"])) == ["8000: fl.supernode_base_port and api.port"]
    assert ports.clashes(load_config(["fl.runtime=simulation", "fl.supernode_base_port=7999"])) == []


def test_a_huge_device_count_lists_only_the_ports_there_are() -> None:
    # fl.devices and stream.num_devices take any positive number; the check must not build 2**63 entries.
    cfg = load_config([f"fl.devices={2**63}", "stream.num_devices=1000000000", "stream.dataset_records=1000000000",
                       "fl.supernode_base_port=65000"])
    supernodes = [port for what, port in ports.local_listeners(cfg) if what == "fl.supernode_base_port"]
    assert supernodes == list(range(65000, 65536))
