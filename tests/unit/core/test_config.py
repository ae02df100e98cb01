"""The Hydra configuration: profiles, overrides, and errors that name the key."""

from dataclasses import Field, fields, is_dataclass
from typing import Any, get_type_hints

import pytest
from omegaconf import OmegaConf

from core.config import AppConfig, ConfigError, flatten, load_config, to_yaml


def test_testing_profile_is_the_default_and_holds_the_seed_values() -> None:
    cfg = load_config()
    assert cfg.profile_name == "testing"
    assert cfg.stream.records_per_second == 10
    assert cfg.stream.batch_size == 10
    assert cfg.stream.loop_dataset is True
    assert cfg.fl.local_training_interval_seconds == 30
    assert cfg.fl.global_update_interval_minutes == 1
    assert cfg.fl.min_devices_for_aggregation == 3


PRODUCTION_KEY = "api.api_key=a-test-key-of-16-chars"  # production refuses to start without one


def test_production_profile() -> None:
    cfg = load_config(["profile=production", PRODUCTION_KEY])
    assert cfg.profile_name == "production"
    assert cfg.stream.records_per_second == 100
    assert cfg.fl.local_training_interval_seconds == 300
    assert cfg.fl.global_update_interval_minutes == 30


def test_command_line_override_beats_the_profile() -> None:
    cfg = load_config(["profile=production", PRODUCTION_KEY, "stream.records_per_second=50"])
    assert cfg.stream.records_per_second == 50
    assert cfg.fl.global_update_interval_minutes == 30  # rest of the profile kept


def test_result_is_the_typed_config_object() -> None:
    cfg = load_config(["kafka.topics.windows.partitions=7"])
    assert isinstance(cfg, AppConfig)
    assert cfg.kafka.topics.windows.partitions == 7
    assert isinstance(cfg.stream.records_per_second, float)


def test_group_variants_switch_servers_off() -> None:
    cfg = load_config(["kafka=remote", "mongo=remote"])
    assert cfg.kafka.local_broker.enabled is False
    assert cfg.mongo.local_server.enabled is False


def test_paths_derive_from_home(tmp_path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    assert cfg.paths.logs_dir == f"{tmp_path}/logs"
    assert cfg.paths.data_dir == f"{tmp_path}/.data"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("stream.no_such_key=1", "stream.no_such_key"),
        ("no_such_group_key=1", "no_such_group_key"),
        ("stream.records_per_second=fast", "stream.records_per_second"),
        ("stream.batch_size=0", "stream.batch_size"),
        ("fl.min_devices_for_aggregation=-1", "fl.min_devices_for_aggregation"),
        ("api.port=70000", "api.port"),
        ("kafka.bootstrap_servers=nohost", "kafka.bootstrap_servers"),
        ("mongo.uri=http://x", "mongo.uri"),
        ("fl.min_devices_for_aggregation=60", "fl.min_devices_for_aggregation"),
    ],
)
def test_bad_key_or_value_fails_naming_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert named in str(info.value)


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(["profile=staging"])
    message = str(info.value)
    assert "profile/staging" in message
    assert "production" in message and "testing" in message


def test_yaml_round_trips_to_the_same_config(tmp_path) -> None:
    """What `fl-app config` prints composes back into an equal config (every key, not one)."""
    cfg = load_config(["profile=production", PRODUCTION_KEY, "stream.batch_size=25", "flink.valid_ranges.light=[1,2]",
                       "stream.max_records=7", f"paths.home={tmp_path}"])
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AppConfig), OmegaConf.create(to_yaml(cfg))))
    assert back == cfg
    flat = flatten(cfg)
    assert flat == flatten(back)
    assert flat["stream.batch_size"] == 25 and flat["flink.valid_ranges.light"] == [1.0, 2.0]


def numeric_fields(node: Any, prefix: str = "") -> list[tuple[str, Field]]:
    out = []
    hints = get_type_hints(node)
    for f in fields(node):
        kind: Any = hints[f.name]
        if is_dataclass(kind):
            out += numeric_fields(kind, f"{prefix}{f.name}.")
        elif kind in (int, float, int | None, float | None):
            out.append((f"{prefix}{f.name}", f))
    return out


# Numbers whose every value is meaningful (a seed, a retention that Kafka treats as "forever").
UNCHECKED = {"stream.seed", "fl.model.seed"}


def test_every_numeric_key_declares_its_checks() -> None:
    """A new number without a check beside it fails here, not silently at run time."""
    unchecked = [key for key, f in numeric_fields(AppConfig) if not f.metadata.get("checks") and key not in UNCHECKED]
    assert not unchecked, f"declare checks for: {unchecked}"


def test_a_check_declared_beside_a_nested_field_is_applied() -> None:
    with pytest.raises(ConfigError, match=r"kafka.topics.dead_letter.replication_factor must be > 0, got 0"):
        load_config(["kafka.topics.dead_letter.replication_factor=0"])
    with pytest.raises(ConfigError, match=r"flink.dedup_ttl_seconds must exceed stream.delivery_timeout_ms"):
        load_config(["flink.dedup_ttl_seconds=60"])


def test_flower_app_declares_every_run_setting() -> None:
    """Flower refuses a run whose run config has a key the app's pyproject does not declare."""
    import tomllib

    from core.config import PROJECT_ROOT
    from core.messages import RunSettings

    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    settings = RunSettings.from_config(load_config(), [1, 2, 3], "/tmp/server.json")
    assert set(settings.to_run_config()) == set(declared)


@pytest.mark.parametrize("override", ["spark.batch.settle_seconds=inf", "spark.batch.settle_seconds=0.5",
                                      "spark.batch.rebuild_seconds=inf", "spark.scorer.partitions=18446744073709551616",
                                      "fl.supernode_heartbeat_seconds=1e300", "fl.supernode_heartbeat_seconds=nan",
                                      "spark.driver_memory=64m", "spark.driver_memory=lots", "spark.driver_memory=1t",
                                      "spark.driver_java_options='-XX:+UseSerialGC -Xmx8g'",
                                      "spark.driver_java_options='-Xms1g'", "spark.driver_java_options=-Xmsbig",
                                      "spark.driver_java_options='-XX:MinHeapSize=2g'",
                                      "spark.driver_java_options='-XX:MaxHeapSize=1g'",
                                      "kafka.local_broker.heap=64m", "kafka.local_broker.heap='512m -XX:+Evil'"])
def test_the_cost_settings_refuse_values_that_would_crash_or_stall_a_component(override: str) -> None:
    # inf seconds overflow datetime/timedelta in the batch loop (a crash loop under the supervisor);
    # Flower takes heartbeats of 10-1800 s only; Spark refuses to start with -Xmx in the Java options,
    # and a JVM does not start with a heap it cannot parse, nor with an initial heap above its maximum.
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config([override])


def test_spark_java_options_take_an_initial_heap_within_the_maximum_and_a_soft_maximum() -> None:
    cfg = load_config(["spark.driver_java_options='-Xms128m -XX:SoftMaxHeapSize=256m'", "spark.driver_memory=1g"])
    assert "-Xms128m" in cfg.spark.driver_java_options
