"""What `fl-app run`, `stop`, `status` and `reset` do: services, then every component, in the background.

Each component (:class:`core.component.Component`, declared by its own
package) runs as its own ``fl-app <command>`` process under the one
service-runner (pid file, log in ``logs/``, clean stop), composed from the
same Hydra overrides the user gave, so every process sees one configuration.
It knows the components only through the list in ``fl_app/components.py``.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import services
from core.atomic import read_json, write_json
from core.component import Component
from core.config import AppConfig, TopicConfig
from core.services.runner import KILL_WAIT_SECONDS, ManagedProcess, ServiceError, State, Status, kill_all
from fl_app import ports
from fl_app.components import components

# Last: it restarts the others when they crash (fl_app/supervisor.py); stopped first.
SUPERVISOR = Component(name="supervisor", command=("supervise",), stop_timeout=10.0)
# In start order.
COMPONENTS: tuple[Component, ...] = (*components(), SUPERVISOR)

# A component that cannot start (bad data set path, missing environment) dies within
# seconds; `run` waits this long so it can report it instead of "running".
SETTLE_SECONDS = 3.0


@dataclass
class RunReport:
    """What `run` did: services ready, preparation notes, the components' states."""

    ready: services.Readiness
    notes: list[str] = field(default_factory=list)
    components: list[Status] = field(default_factory=list)


def _process(cfg: AppConfig, component: Component, overrides: Sequence[str]) -> ManagedProcess:
    return ManagedProcess(
        name=component.name,
        argv=[sys.executable, "-m", "fl_app.cli", *component.command, *overrides],
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        health_check=None,  # alive = healthy; each component logs its own progress
        startup_timeout=5.0,
        stop_timeout=component.stop_timeout,
    )


def enabled(cfg: AppConfig) -> tuple[Component, ...]:
    """The components this configuration runs (each component's own switch, e.g. ``spark.scorer.enabled``)."""
    return tuple(c for c in COMPONENTS if c.enabled(cfg))


def processes(cfg: AppConfig, overrides: Sequence[str] = (), everything: bool = False) -> list[ManagedProcess]:
    """The pipeline components this configuration runs, in start order; with ``everything``, every
    component whatever its switch: what a `run` with other switches started (``spark.one_session=false``
    runs ``spark_scorer`` and ``spark_batch``, the default ``spark``) is still stopped and seen."""
    return [_process(cfg, component, overrides) for component in (COMPONENTS if everything else enabled(cfg))]


def run(cfg: AppConfig, overrides: Sequence[str] = ()) -> RunReport:
    """Start the services and every component; raise ServiceError if anything is not up.

    Raises
    ------
    ServiceError
        A service is unhealthy, or a component died within :data:`SETTLE_SECONDS`
        (the message holds the last lines of its log).
    """
    ports.check_distinct(cfg)
    ready = services.up(cfg)
    unhealthy = [s.name for s in ready.services if s.state not in (State.RUNNING, State.EXTERNAL)]
    if unhealthy:
        raise ServiceError(f"not healthy: {', '.join(unhealthy)}")
    report = RunReport(ready)
    report.notes = [c.prepare(cfg) for c in enabled(cfg) if c.prepare is not None]
    procs = processes(cfg, overrides)
    write_json(_marker(cfg), {"components": [p.name for p in procs]})  # what `status` expects to run
    for proc in procs:
        proc.start()
    time.sleep(SETTLE_SECONDS)
    dead = [p for p in procs if p.pid() is None]
    if dead:
        raise ServiceError("\n".join(f"{p.name} stopped; last lines of {p.log_file}:\n{p.tail()}" for p in dead))
    report.components = [p.status() for p in procs]
    return report


# `stop` budgets (seconds of SIGTERM before SIGKILL), per phase; with each phase's
# KILL_WAIT_SECONDS they add up to at most 30 s, also when every process needs SIGKILL.
SUPERVISOR_STOP_SECONDS = 2.0
COMPONENTS_STOP_SECONDS = 10.0
SERVICES_STOP_SECONDS = 10.0


@dataclass
class Stopped:
    """What `stop` ended, in reverse start order; ``killed``: those that needed SIGKILL."""

    names: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def stop(cfg: AppConfig) -> Stopped:
    """Stop everything `run` started, bounded (at most ~30 s): the supervisor first (so it restarts
    nothing), then every component at once, then what the federation left in sessions of its own,
    then the services at once. Each phase SIGKILLs what outlives its budget.

    Removing the marker first is also what tells a foreground `fl-app run` that `fl-app stop` ended it.
    """
    started = time.monotonic()
    _marker(cfg).unlink(missing_ok=True)
    procs = processes(cfg, everything=True)  # one without a pid file is no work
    done = Stopped()
    for group, budget in (([p for p in procs if p.name == SUPERVISOR.name], SUPERVISOR_STOP_SECONDS),
                          ([p for p in reversed(procs) if p.name != SUPERVISOR.name], COMPONENTS_STOP_SECONDS)):
        _stop_together(group, budget, done)
    done.names += leftovers(cfg)
    _stop_together(list(reversed(services.local_processes(cfg))), SERVICES_STOP_SECONDS, done)
    done.seconds = time.monotonic() - started
    return done


def kill(cfg: AppConfig) -> list[str]:
    """SIGKILL everything `run` started, all at once (a second Ctrl-C); the names of what was still
    running. Waits at most :data:`KILL_WAIT_SECONDS` for them to be gone."""
    _marker(cfg).unlink(missing_ok=True)
    return kill_all([*processes(cfg, everything=True), *services.local_processes(cfg)]) + leftovers(cfg)


def leftovers(cfg: AppConfig) -> list[str]:
    """SIGKILL what killed components left outside their process groups (each component's own
    ``kill_leftovers``: the federation's SuperLink, SuperNodes, ServerApp ...); the names killed.

    `stop` calls it after the components; the supervisor before it restarts one, so a restarted
    federation never runs beside a second SuperLink or ServerApp.
    """
    return [name for c in COMPONENTS if c.kill_leftovers is not None for name in c.kill_leftovers(cfg)]


def before_restart(cfg: AppConfig, name: str) -> list[str]:
    """What the supervisor does before it restarts component ``name``: end what its killed
    predecessor left outside its process group."""
    component = next((c for c in COMPONENTS if c.name == name), None)
    return component.kill_leftovers(cfg) if component is not None and component.kill_leftovers else []


def _stop_together(procs: Sequence[ManagedProcess], budget: float, done: Stopped) -> None:
    """Stop ``procs`` in parallel threads, each within ``budget``; record them in ``done``."""
    result: dict[str, bool] = {}

    def one(proc: ManagedProcess) -> None:
        result[proc.name] = proc.stop(timeout=budget)

    threads = [threading.Thread(target=one, args=(p,), name=f"stop-{p.name}", daemon=True) for p in procs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + budget + KILL_WAIT_SECONDS + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    done.names += [p.name for p in procs if result.get(p.name)]
    done.killed += [p.name for p in procs if result.get(p.name) and p.killed]


def status(cfg: AppConfig) -> list[Status]:
    """Each component's state; the supervisor's restarts in ``detail``."""
    from fl_app import supervisor

    restarts = supervisor.records(cfg)
    out = []
    runs = {c.name for c in enabled(cfg)}
    for proc in processes(cfg, everything=True):
        if proc.name not in runs and proc.pid() is None:  # neither run by these switches nor running
            continue
        s, r = proc.status(), restarts.get(proc.name, {})
        if r.get("gave_up"):
            s.detail = f"keeps crashing: left down after {len(r.get('crashes', []))} crashes; see {proc.log_file}"
        elif r.get("restarts"):
            s.detail = f"restarted {r['restarts']}x by the supervisor"
        out.append(s)
    return out


def expected(cfg: AppConfig) -> list[str]:
    """The components `run` started and `stop` has not stopped: they should be running."""
    return list(read_json(_marker(cfg), {}).get("components", []))


def _marker(cfg: AppConfig) -> Path:
    return Path(cfg.paths.run_dir) / "pipeline.json"


# ---------------------------------------------------------------------- reset
@dataclass
class ResetPlan:
    """What `fl-app reset` removes and keeps here (``(what, path)``), and the remote data it would delete."""

    remove: list[tuple[str, Path]] = field(default_factory=list)
    keep: list[tuple[str, Path]] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


def reset_plan(cfg: AppConfig) -> ResetPlan:
    """The paths a reset removes: every record of what has flowed, so the next `run` starts afresh.
    Kept: what is slow to make again or is a credential (caches, data set, certificates, Superset's
    secret, credentials and metadata) and the logs."""
    from core.services import kafka, mongo

    plan = ResetPlan()
    if kafka.runs_locally(cfg):
        nodes = cfg.kafka.local_broker.nodes
        plan.remove += [(f"the local Kafka {'broker' if nodes == 1 else f'node {n}'}'s data (topics, consumer offsets)",
                         kafka.storage_dir(cfg, n)) for n in range(1, nodes + 1)]
    else:
        plan.remote.append(f"Kafka topics {', '.join(t.name for t in _topics(cfg))} at {cfg.kafka.bootstrap_servers}")
    if mongo.runs_locally(cfg):
        plan.remove.append(("the local MongoDB server's data (every collection)", mongo.storage_dir(cfg)))
    else:
        plan.remote.append(f"MongoDB database {cfg.mongo.database} at {mongo.uri_host_port(cfg.mongo.uri)[0]}")
    plan.remove += [("the Flink job's checkpoints", Path(cfg.flink.checkpoint_dir)),
                    ("the Spark scorer's checkpoints", Path(cfg.spark.scorer.checkpoint_dir)),
                    ("the producer's position", Path(cfg.stream.state_file)),
                    ("pid files, supervisor and run records, generated settings", Path(cfg.paths.run_dir))]
    store = cfg.spark.batch.store_url
    if store.startswith("sqlite:///"):
        plan.remove.append(("the batch analytics' serving tables", Path(store.removeprefix("sqlite:///"))))
    plan.keep = [("package caches, jars and the generated data set", Path(cfg.paths.cache_dir)),
                 ("Flower's certificates and keys", Path(cfg.fl.security.certs_dir)),
                 ("Superset's secret key, admin password and metadata", Path(cfg.superset.home)),
                 ("the logs", Path(cfg.paths.logs_dir))]
    if cfg.stream.dataset_path:
        plan.keep.append(("the data set file", Path(cfg.stream.dataset_path)))
    return plan


def reset(cfg: AppConfig, include_remote: bool = False) -> tuple[Stopped, list[str]]:
    """Stop everything, then remove what :func:`reset_plan` lists; with ``include_remote`` also
    delete the remote topics and database (recreated empty by the next `run`).

    Raises
    ------
    ServiceError
        Remote services without ``include_remote`` (nothing is stopped or removed), or a process
        still alive after the stop (nothing is removed).
    """
    plan = reset_plan(cfg)
    if plan.remote and not include_remote:
        raise ServiceError(f"remote data would stay ({'; '.join(plan.remote)}): pass --include-remote to "
                           "delete it too; nothing was stopped or removed")
    stopped = stop(cfg)
    alive = [p.name for p in [*processes(cfg, everything=True), *services.local_processes(cfg)] if p.pid() is not None]
    if alive:
        raise ServiceError(f"still running after the stop: {', '.join(alive)}; nothing was removed")
    removed = []
    for what, path in plan.remove:
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(f"{what}: {path}")
    if plan.remote:
        removed += _delete_remote(cfg)
    return stopped, removed


def _topics(cfg: AppConfig) -> list[TopicConfig]:
    from core import topics

    return topics.topic_configs(cfg.kafka)


def _delete_remote(cfg: AppConfig) -> list[str]:
    """Delete the configured topics on a remote Kafka and drop the configured database on a remote MongoDB."""
    from core import topics
    from core.services import kafka, mongo
    from core.storage import Storage

    done = []
    if not kafka.runs_locally(cfg):
        admin, names = topics.admin_client(cfg.kafka), [t.name for t in _topics(cfg)]
        try:
            existing = set(admin.list_topics(timeout=10).topics)
            for name, future in admin.delete_topics([n for n in names if n in existing], operation_timeout=30).items():
                future.result()
                done.append(f"Kafka topic {name} at {cfg.kafka.bootstrap_servers}")
            # Deletion completes asynchronously: wait until the metadata no longer lists them, so the
            # next `run` creates them afresh instead of meeting "marked for deletion".
            deadline = time.monotonic() + 30
            while set(names) & set(admin.list_topics(timeout=10).topics) and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception as exc:  # confluent_kafka raises KafkaException
            raise ServiceError(f"cannot delete the topics at {cfg.kafka.bootstrap_servers}: {exc}") from exc
    if not mongo.runs_locally(cfg):
        with Storage.from_config(cfg.mongo) as store:
            store.client.drop_database(cfg.mongo.database)
        done.append(f"MongoDB database {cfg.mongo.database}")
    return done
