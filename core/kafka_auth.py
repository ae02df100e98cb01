"""Who a Kafka client is: the pipeline's credentials, each device's, and the client settings they make.

Every component builds its Kafka client settings here (:func:`client_config` for
librdkafka, :func:`java_properties` for Flink and Spark), so turning on
``kafka.sasl.enabled`` authenticates all of them at once. Passwords live in
0600 files under ``kafka.sasl.logins_dir``, never on a command line: the
pipeline's (generated once for the local broker unless ``kafka.sasl.password``
is given) and one per device, ``device-<id>.json``, which is all a device's
host needs to read its own windows (ACLs: :func:`core.topics.ensure_device_access`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import read_json, write_json
from core.config import ConfigError, KafkaConfig
from core.services.kafka import runs_locally_for

DEVICE_MECHANISM = "SCRAM-SHA-512"  # devices never send their password itself (RFC 5802)
PIPELINE_FILE = "pipeline.json"
# flink-sql-connector-kafka relocates Kafka's classes: a JAAS line must name the login module there
# ("No LoginModule found for org.apache.kafka...PlainLoginModule" otherwise; seen in the job's log).
FLINK_SHADED = "org.apache.flink.kafka.shaded."
KAFKA_CREDENTIALS = "kafka-credentials"  # the SuperNode node-config key naming a device's credentials file


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    mechanism: str
    security_protocol: str = "SASL_PLAINTEXT"
    ca_file: str | None = None

    def librdkafka(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"security.protocol": self.security_protocol, "sasl.mechanisms": self.mechanism,
                                "sasl.username": self.username, "sasl.password": self.password}
        if self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        return conf

    def java(self, shaded: str = "") -> dict[str, str]:
        """The Java client's properties (Spark's Kafka source; Flink's connector with the package
        prefix its fat jar relocates Kafka's classes under, :data:`FLINK_SHADED`)."""
        module = shaded + ("org.apache.kafka.common.security.plain.PlainLoginModule" if self.mechanism == "PLAIN"
                           else "org.apache.kafka.common.security.scram.ScramLoginModule")
        props = {"security.protocol": self.security_protocol, "sasl.mechanism": self.mechanism,
                 "sasl.jaas.config": f'{module} required username="{self.username}" password="{self.password}";'}
        if self.ca_file:
            props |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ca_file}
        return props

    def save(self, path: Path) -> None:
        write_json(path, self.__dict__, mode=0o600)

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """A credentials file (a device's, given to its host); a clear error if it is missing or malformed."""
        raw = read_json(path, None)
        try:
            return cls(**raw)
        except TypeError:
            raise ConfigError(f"{path}: not a Kafka credentials file (username, password, mechanism)") from None


def _generated_password() -> str:
    return secrets.token_urlsafe(24)  # JAAS-safe: letters, digits, - and _


def pipeline_credentials(kafka: KafkaConfig, local_broker: bool) -> Credentials | None:
    """The pipeline's own login; None without SASL. Generated once (0600) for our local broker;
    a remote broker's must be given (``kafka.sasl.password``)."""
    sasl = kafka.sasl
    if not sasl.enabled:
        return None
    password = sasl.password
    if not password:
        path = Path(sasl.logins_dir) / PIPELINE_FILE
        stored = read_json(path, {})
        if stored.get("username") == sasl.username and stored.get("password"):
            password = stored["password"]
        elif local_broker:
            password = _generated_password()
            Credentials(sasl.username, password, sasl.mechanism, sasl.security_protocol, sasl.ca_file).save(path)
        else:
            raise ConfigError("kafka.sasl.password: required with kafka.sasl.enabled=true and a broker of your own "
                              "(set $KAFKA_SASL_PASSWORD or the override)")
    return Credentials(sasl.username, password, sasl.mechanism, sasl.security_protocol, sasl.ca_file)


def device_username(device: int) -> str:
    return f"device-{device}"


def device_credentials_file(kafka: KafkaConfig, device: int) -> Path:
    return Path(kafka.sasl.logins_dir) / f"{device_username(device)}.json"


def device_credentials(kafka: KafkaConfig, device: int) -> Credentials:
    """A device's login (SCRAM), made once and kept in its own 0600 file."""
    path = device_credentials_file(kafka, device)
    stored = read_json(path, {})
    if stored.get("username") == device_username(device) and stored.get("password"):
        return Credentials(**stored)
    made = Credentials(device_username(device), _generated_password(), DEVICE_MECHANISM,
                       kafka.sasl.security_protocol, kafka.sasl.ca_file)
    made.save(path)
    return made


def client_config(kafka: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for one of the pipeline's own clients: the bootstrap servers and, with
    SASL, the pipeline's login; ``extra`` on top (``group.id``, ...)."""
    creds = pipeline_credentials(kafka, local_broker=runs_locally_for(kafka))
    return {"bootstrap.servers": kafka.bootstrap_servers, **(creds.librdkafka() if creds else {}), **extra}


def java_properties(kafka: KafkaConfig, shaded: str = "") -> dict[str, str]:
    """The Java clients' settings besides the bootstrap servers (empty without SASL)."""
    creds = pipeline_credentials(kafka, local_broker=runs_locally_for(kafka))
    return creds.java(shaded) if creds else {}
