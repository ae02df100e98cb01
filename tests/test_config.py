"""The Hydra configuration: profiles, overrides, and errors that name the key."""

import pytest

from fl_app.config import AppConfig, ConfigError, flatten, load_config, to_yaml


def test_testing_profile_is_the_default_and_holds_the_seed_values() -> None:
    cfg = load_config()
    assert cfg.profile_name == "testing"
    assert cfg.stream.records_per_second == 10
    assert cfg.stream.batch_size == 10
    assert cfg.stream.loop_dataset is True
    assert cfg.fl.local_training_interval_seconds == 30
    assert cfg.fl.global_update_interval_minutes == 1
    assert cfg.fl.min_devices_for_aggregation == 3


def test_production_profile() -> None:
    cfg = load_config(["profile=production"])
    assert cfg.profile_name == "production"
    assert cfg.stream.records_per_second == 100
    assert cfg.fl.local_training_interval_seconds == 300
    assert cfg.fl.global_update_interval_minutes == 30


def test_command_line_override_beats_the_profile() -> None:
    cfg = load_config(["profile=production", "stream.records_per_second=50"])
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


def test_yaml_and_flat_views_round_trip_the_values() -> None:
    cfg = load_config(["stream.batch_size=25"])
    assert "batch_size: 25" in to_yaml(cfg)
    flat = flatten(cfg)
    assert flat["stream.batch_size"] == 25
    assert flat["kafka.topics.readings.name"] == "iot_stream"
