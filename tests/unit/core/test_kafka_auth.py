"""Kafka logins: where they come from, where they are kept, and what the clients and the broker are given."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import kafka_auth
from core.config import ConfigError, load_config
from core.services import kafka


def sasl_config(tmp_path: Path, *extra: str):
    return load_config([f"paths.home={tmp_path}", "kafka.sasl.enabled=true", *extra])


def test_without_sasl_clients_get_only_the_bootstrap_servers(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    assert kafka_auth.client_config(cfg.kafka, **{"group.id": "g"}) == {
        "bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "g"}
    assert kafka_auth.java_properties(cfg.kafka) == {}
    assert not Path(cfg.kafka.sasl.logins_dir).exists()  # no login made


def test_the_local_brokers_password_is_made_once_and_kept_for_its_owner_only(tmp_path: Path) -> None:
    cfg = sasl_config(tmp_path)
    first = kafka_auth.client_config(cfg.kafka)
    assert first["security.protocol"] == "SASL_PLAINTEXT" and first["sasl.mechanisms"] == "PLAIN"
    assert len(first["sasl.password"]) >= 24
    assert kafka_auth.client_config(cfg.kafka)["sasl.password"] == first["sasl.password"]  # the same next time
    stored = Path(cfg.kafka.sasl.logins_dir) / kafka_auth.PIPELINE_FILE
    assert stored.stat().st_mode & 0o777 == 0o600


def test_a_remote_broker_needs_the_password_given(tmp_path: Path) -> None:
    remote = sasl_config(tmp_path, "kafka.local_broker.enabled=false", "kafka.sasl.mechanism=SCRAM-SHA-512")
    with pytest.raises(ConfigError, match="kafka.sasl.password"):
        kafka_auth.client_config(remote.kafka)
    given = sasl_config(tmp_path, "kafka.local_broker.enabled=false", "kafka.sasl.password=given-0123456789")
    assert kafka_auth.client_config(given.kafka)["sasl.password"] == "given-0123456789"


def test_a_password_that_would_break_the_jaas_line_is_refused(tmp_path: Path) -> None:
    for bad in ['pa"ss', "pa\\\\ss", "pa;ss"]:
        with pytest.raises(ConfigError, match="kafka.sasl.password"):
            sasl_config(tmp_path, f"kafka.sasl.password='{bad}'")


def test_plain_is_refused_to_a_broker_on_another_host_without_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kafka.sasl.mechanism"):
        sasl_config(tmp_path, "kafka.bootstrap_servers=kafka.example.org:9092")
    remote = "kafka.bootstrap_servers=kafka.example.org:9092"
    assert sasl_config(tmp_path, remote, "kafka.sasl.mechanism=SCRAM-SHA-512")
    assert sasl_config(tmp_path, remote, "kafka.sasl.security_protocol=SASL_SSL")
    assert sasl_config(tmp_path, remote, "kafka.sasl.private_network=true")


def test_java_clients_get_a_jaas_line_and_flink_the_shaded_module(tmp_path: Path) -> None:
    cfg = sasl_config(tmp_path, "kafka.sasl.password=pw-0123456789")
    spark = kafka_auth.java_properties(cfg.kafka)
    assert spark["sasl.jaas.config"] == ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                                         'username="pipeline" password="pw-0123456789";')
    flink = kafka_auth.java_properties(cfg.kafka, shaded=kafka_auth.FLINK_SHADED)
    assert flink["sasl.jaas.config"].startswith("org.apache.flink.kafka.shaded.org.apache.kafka.")


def test_each_device_has_its_own_scram_login_in_its_own_file(tmp_path: Path) -> None:
    cfg = sasl_config(tmp_path)
    three, four = kafka_auth.device_credentials(cfg.kafka, 3), kafka_auth.device_credentials(cfg.kafka, 4)
    assert (three.username, three.mechanism) == ("device-3", "SCRAM-SHA-512") and three.password != four.password
    path = kafka_auth.device_credentials_file(cfg.kafka, 3)
    assert path.stat().st_mode & 0o777 == 0o600
    assert kafka_auth.Credentials.load(path) == three == kafka_auth.device_credentials(cfg.kafka, 3)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a Kafka credentials file"):
        kafka_auth.Credentials.load(tmp_path / "junk.json")


def test_the_sasl_broker_authenticates_every_listener_and_denies_by_default(tmp_path: Path) -> None:
    cfg = sasl_config(tmp_path)
    props = dict(line.split("=", 1) for line in kafka._server_properties(cfg).splitlines())
    assert props["listener.security.protocol.map"] == "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    assert props["super.users"] == "User:pipeline" and props["allow.everyone.if.no.acl.found"] == "false"
    assert "PLAINTEXT://" not in props["listeners"].replace("SASL_PLAINTEXT://", "")
    plain = load_config([f"paths.home={tmp_path}"])
    assert "super.users" not in kafka._server_properties(plain)


def test_a_device_listener_takes_device_logins_only_and_the_run_settings_give_devices_its_address(
        tmp_path: Path) -> None:
    from core.messages import RunSettings

    cfg = sasl_config(tmp_path, "kafka.bootstrap_servers=127.0.0.1:9092",
                      "kafka.device_bootstrap_servers=10.231.0.1:9095")
    props = dict(line.split("=", 1) for line in kafka._server_properties(cfg).splitlines())
    assert props["listeners"].endswith(",DEVICES://10.231.0.1:9095")
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092,DEVICES://10.231.0.1:9095"
    assert props["listener.security.protocol.map"].endswith(",DEVICES:SASL_PLAINTEXT")
    # The pipeline's PLAIN password is never asked for on the devices' network.
    assert props["listener.name.devices.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "password" not in props["listener.name.devices.scram-sha-512.sasl.jaas.config"]
    assert "listener.name.devices.plain.sasl.jaas.config" not in props
    assert RunSettings.from_config(cfg, [1, 2], "s.json").kafka_bootstrap == "10.231.0.1:9095"
    assert RunSettings.from_config(sasl_config(tmp_path), [1], "s.json").kafka_bootstrap == "127.0.0.1:9092"
    without = dict(line.split("=", 1) for line in kafka._server_properties(sasl_config(tmp_path)).splitlines())
    assert "DEVICES" not in without["listeners"] + without["listener.security.protocol.map"]


@pytest.mark.parametrize(("value", "error"), [
    ("0.0.0.0:9095", "not 0.0.0.0"),
    ("nohost", "host:port"),
    ("10.0.0.1:9095,10.0.0.1:9096", "one address per local Kafka node"),
])
def test_a_device_address_devices_cannot_dial_is_refused(tmp_path: Path, value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config([f"paths.home={tmp_path}", f"kafka.device_bootstrap_servers='{value}'"])
