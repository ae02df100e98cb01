"""The TCP ports a run on this machine listens on, and the check that no two of them are the same.

Each port has its own default beside its field (core/config.py), some derived from
another (the SuperLink's Control API beside its Fleet API, SuperNode i at base + i,
Kafka node n at the n-th address). Defaults once collided: the Control API took the
Fleet API's port + 1, 9092, Kafka's own, so the first ``make run`` left the
federation down after six "port already in use" crashes. ``fl-app run`` checks
here before it starts anything and names both owners of a port.
"""

from __future__ import annotations

from collections import defaultdict

from core.config import AppConfig, ConfigError, host_port
from core.services import flink_cluster, kafka, mongo, spark_cluster
from fl_app.federation import deployment

Listener = tuple[str, int]  # (what listens, as its config key says it; port)


def local_listeners(cfg: AppConfig) -> list[Listener]:
    """Every port this machine's run listens on, by the config key that sets it."""
    out: list[Listener] = []
    if kafka.runs_locally(cfg):
        nodes = cfg.kafka.local_broker.nodes
        out += [("kafka.bootstrap_servers", host_port(a.strip())[1]) for a in cfg.kafka.bootstrap_servers.split(",")
                if a.strip()]
        out += [("kafka.local_broker.controller_port", cfg.kafka.local_broker.controller_port + n)
                for n in range(nodes)]
    if mongo.runs_locally(cfg):
        out.append(("mongo.uri", mongo.uri_host_port(cfg.mongo.uri)[1]))
    if flink_cluster.runs_locally(cfg):
        out += [("flink.jobmanager", flink_cluster.rest_address(cfg)[1]),
                ("flink.local_cluster.rpc_port", cfg.flink.local_cluster.rpc_port)]
    if spark_cluster.runs_locally(cfg):
        workers = cfg.spark.local_cluster.workers
        out += [("spark.master", spark_cluster.master_address(cfg)[1]),
                ("spark.local_cluster.webui_port", cfg.spark.local_cluster.webui_port)]
        out += [("spark.local_cluster.worker_base_port", cfg.spark.local_cluster.worker_base_port + i)
                for i in range(workers)]
    if cfg.fl.runtime == "deployment":
        out += [("fl.superlink_address", host_port(cfg.fl.superlink_address)[1]),
                ("fl.control_address", host_port(deployment.control_address(cfg))[1])]
        # At most this many local SuperNodes, and no port past 65535 (fl.devices may be any positive
        # number: 2**63 must not make a list of that length).
        base = cfg.fl.supernode_base_port
        devices = min(cfg.fl.devices or cfg.stream.num_devices, cfg.stream.num_devices, 65536 - base)
        out += [("fl.supernode_base_port", base + i) for i in range(devices)]
    if cfg.api.enabled:
        out.append(("api.port", cfg.api.port))
    if cfg.superset.enabled:
        out.append(("superset.port", cfg.superset.port))
    return out


def clashes(cfg: AppConfig) -> list[str]:
    """One line per port that two settings give: "9092: kafka.bootstrap_servers and fl.control_address"."""
    owners: dict[int, list[str]] = defaultdict(list)
    for what, port in local_listeners(cfg):
        if what not in owners[port]:
            owners[port].append(what)
    return [f"{port}: {' and '.join(names)}" for port, names in sorted(owners.items()) if len(names) > 1]


def check_distinct(cfg: AppConfig) -> None:
    """Raise ConfigError when two of this run's listeners would need the same port."""
    if found := clashes(cfg):
        raise ConfigError("two settings give the same port (change one of them): " + "; ".join(found))
