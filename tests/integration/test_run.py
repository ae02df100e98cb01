"""`fl-app run` on real servers: run, status and stop in the background; the foreground run and its
Ctrl-C, `fl-app stop` from another terminal, MongoDB going away."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.config import PROJECT_ROOT, load_config
from core.services.runner import pid_from_file
from core.storage import Storage
from tests.support.processes import kill_processes_under, live_processes_under
from tests.support.stack import private_overrides

FL_APP = Path(sys.executable).parent / "fl-app"

@pytest.mark.integration
def test_run_status_stop(tmp_path: Path) -> None:
    """`fl-app run` starts services, the Flink job, the producer and the federation in the
    background; readings flow into MongoDB, global models follow; `stop` ends all."""
    overrides = [*private_overrides(tmp_path), "stream.dataset_records=2000", "stream.records_per_second=50",
                 "fl.devices=3", "fl.local_training_interval_seconds=5", "fl.global_update_interval_minutes=0.25"]
    env = {**os.environ, "COLUMNS": "200", "FL_APP_API_KEY": "e2e-key"}

    def fl_app(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True,
                              timeout=300, env=env, cwd=PROJECT_ROOT)

    try:
        before = fl_app("services", "status")
        assert before.returncode == 3 and "stopped" in before.stdout
        up = fl_app("run")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "running." in up.stdout
        for name in ("iot_stream", "device_windows", "iot_stream_dlq", "device_data", "global_model",
                     "kafka_producer", "flink_job", "federation", "spark", "superset", "api"):
            assert name in up.stdout
        assert "spark_scorer" not in up.stdout and "spark_batch" not in up.stdout  # one process: spark
        for log in ("kafka.log", "mongo.log", "fl_app.log", "kafka_producer.log", "flink_job.log"):
            assert (tmp_path / "logs" / log).is_file(), log
        assert fl_app("services", "status").stdout.count("running") == 2

        def count(where: str, text: str) -> int:
            found = re.search(where + r"\s*\W\s*([\d,]+)", text)
            return int(found.group(1).replace(",", "")) if found else -1

        # Flink takes ~30 s to start, a first ClientApp ~20 s more, the scorer's Spark ~20 s after the first model.
        deadline = time.monotonic() + 300
        while True:
            status = fl_app("status")
            assert status.returncode == 0, status.stdout + status.stderr
            if count("mongo predictions", status.stdout) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert count("kafka iot_stream", status.stdout) >= 100, status.stdout
        assert count("mongo device_data", status.stdout) >= 50, status.stdout  # stored by the Flink job
        assert re.search(r"producer next: loop \d+", status.stdout), status.stdout
        assert count("mongo global_model", status.stdout) >= 1, status.stdout  # the federation aggregated
        assert count("mongo predictions", status.stdout) >= 1, status.stdout  # the Spark scorer scored
        # kafka, mongo, flink_job, kafka_producer, federation, spark (scorer and batch), superset, api, supervisor
        assert status.stdout.count("running") == 9
        collections = ("device_data", "local_models", "global_model", "predictions")
        first = {c: count(f"mongo {c}", status.stdout) for c in collections}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # all four grow; at least two aggregations
            later = fl_app("status")
            grown = {c: count(f"mongo {c}", later.stdout) for c in collections}
            if all(grown[c] > first[c] for c in collections) and grown["global_model"] >= 2:
                break
            time.sleep(5)
        assert all(grown[c] > first[c] for c in collections) and grown["global_model"] >= 2, (first, grown)
        assert re.search(r"mongo device_data\s*\W\s*[\d,]+\s*\W\s*[\d.]+", status.stdout)  # with a rate
        view = fl_app("view", "--newest", "2")
        assert view.returncode == 0 and "device_data:" in view.stdout and "global_model:" in view.stdout
        api_url = "http://127.0.0.1:" + next(o.split("=")[1] for o in overrides if o.startswith("api.port="))
        with Storage.from_config(load_config(overrides).mongo) as store:  # the API and MongoDB agree
            api_status = httpx.get(f"{api_url}/api/status", timeout=30).json()
            newest = store.global_model.find_one(sort=[("round", -1)])
            assert newest is not None and abs(api_status["current_round"] - newest["round"]) <= 1
        # Lineage: a prediction leads to the model that scored it, that to its updates, and they to the
        # readings they trained on (stored by the Flink job); MongoDB's records agree (`fl-app lineage check`).
        scored = httpx.get(f"{api_url}/api/predictions", params={"limit": 1}, timeout=30).json()["items"][0]
        chain = httpx.get(f"{api_url}/api/predictions/{scored['event_id']}", timeout=30).json()
        made = httpx.get(api_url + chain[-1]["lineage"], params={"limit": 500}, timeout=30).json()
        assert made["updates"]["total"] >= 1 and all(u["source"] for u in made["updates"]["items"]), made
        with Storage.from_config(load_config(overrides).mongo) as store:
            for u in made["updates"]["items"]:
                for event in (u["source"]["first_event_id"], u["source"]["last_event_id"]):
                    assert store.device_data.find_one({"event_id": event, "device_id": u["device_id"]}), (u, event)
        checked = fl_app("lineage", "check")
        assert checked.returncode == 0 and "consistent." in checked.stdout, checked.stdout + checked.stderr
        admin = {"X-API-Key": "e2e-key"}
        slower = httpx.put(f"{api_url}/api/admin/aggregation-interval", json={"seconds": 600}, headers=admin,
                           timeout=30)
        assert slower.status_code == 200  # the running ServerApp: next aggregation 600 s after the last
        server_log = tmp_path / "logs" / "global_server.log"
        deadline = time.monotonic() + 30
        while "-> 600s (by an operator)" not in server_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        with Storage.from_config(load_config(overrides).mongo) as store:
            time.sleep(6)  # a round already under way may still land
            rounds = store.global_model.count_documents({})
            time.sleep(10)
            assert store.global_model.count_documents({}) == rounds  # 600 s: no round now
            asked = httpx.post(f"{api_url}/api/admin/aggregate", headers=admin, timeout=30)
            assert asked.status_code == 202  # ... until an operator asks for one
            deadline = time.monotonic() + 30
            while store.global_model.count_documents({}) == rounds and time.monotonic() < deadline:
                time.sleep(0.5)
            assert store.global_model.count_documents({}) == rounds + 1, server_log.read_text()[-2000:]
        assert "aggregation requested by an operator" in server_log.read_text()
        httpx.put(f"{api_url}/api/admin/aggregation-interval", json={"seconds": None}, headers=admin, timeout=30)
        again = fl_app("run")  # a second run while running: says so, changes nothing
        assert again.returncode == 0 and "already running" in again.stdout

        run_dir = tmp_path / ".run"
        api = pid_from_file(run_dir / "api.pid")
        assert api is not None
        os.kill(api, signal.SIGKILL)  # a crash: the supervisor restarts it
        deadline = time.monotonic() + 60
        while pid_from_file(run_dir / "api.pid") in (None, api) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pid_from_file(run_dir / "api.pid") not in (None, api), (tmp_path / "logs" / "supervisor.log").read_text()
        restarted = fl_app("status")
        assert restarted.returncode == 0 and "restarted 1x by the supervisor" in restarted.stdout

        for name in ("supervisor", "api"):  # without its supervisor, a component that dies stays down
            pid = pid_from_file(run_dir / f"{name}.pid")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        broken = fl_app("status")
        assert broken.returncode == 4 and "down: api, supervisor" in broken.stderr, broken.stdout + broken.stderr
    finally:
        down = fl_app("stop")
    assert down.returncode == 0
    assert re.search(r"stopped: superset, spark, federation, kafka_producer, flink_job, "
                     r"(.*, )?mongo, kafka in [\d.]+ s", down.stdout), down.stdout
    assert "producing to iot_stream" in (tmp_path / "logs" / "kafka_producer.log").read_text()
    assert not live_processes_under(tmp_path), live_processes_under(tmp_path)  # nothing left running


FOREGROUND = ["stream.dataset_records=2000", "fl.devices=3", "spark.scorer.enabled=false", "spark.batch.enabled=false",
              "superset.enabled=false"]


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def foreground_run(home: Path) -> Iterator[tuple[subprocess.Popen, list[str], list[str]]]:
    """`fl-app run --follow` (what `make run` does in a terminal) on a private stack, once its first
    progress line is out: the process, the lines so far and the overrides. On the way out, whatever
    the test did, nothing of the run is left: a failed test once left whole pipelines running,
    which slowed every test after it."""
    overrides = [*private_overrides(home), *FOREGROUND]
    # Started with SIGINT ignored, as a shell starts a background job (CI runners do): the run must
    # honour Ctrl-C anyway. Once it did not, and the first clean-clone run of this stop went red.
    proc = subprocess.Popen([str(FL_APP), "run", "--follow", *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
                            env={**os.environ, "COLUMNS": "200"}, preexec_fn=ignore_sigint)
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if ("readings" in line and "global rounds" in line) or not line:  # the first progress line, or EOF
                break
        assert any("Ctrl-C stops everything" in line for line in lines), "".join(lines)
        assert live_processes_under(home)
        yield proc, lines, overrides
    finally:
        if proc.poll() is None:
            proc.kill()
        if live_processes_under(home):
            subprocess.run([str(FL_APP), "stop", *overrides], capture_output=True, timeout=120, cwd=PROJECT_ROOT)
            kill_processes_under(home)


def assert_stopped_all(output: str) -> None:
    """The stop line names every component (the supervisor first), then the services; a federation
    stopped while it was still starting is killed, and what it left in between (fl_superlink ...)."""
    assert re.search(r"stopped: supervisor, api, federation, kafka_producer, flink_job, (.*, )?mongo, kafka in "
                     r"[\d.]+ s", output), output


def cpu_burners(count: int = 3) -> list[subprocess.Popen]:
    """A loaded machine: ``count`` processes spinning (more than its 2 cores)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def gone_within(home: Path, seconds: float) -> float:
    """Seconds until nothing of the run under ``home`` is left; fails after ``seconds``."""
    started = time.monotonic()
    while live_processes_under(home) and time.monotonic() - started < seconds:
        time.sleep(0.2)
    assert not live_processes_under(home), live_processes_under(home)
    return time.monotonic() - started


@pytest.mark.integration
@pytest.mark.parametrize("loaded", [False, True], ids=["idle", "loaded"])
def test_run_in_the_foreground_stops_everything_on_ctrl_c(tmp_path: Path, loaded: bool) -> None:
    """Ctrl-C on a foreground run: everything is gone within 30 s, also with the CPU oversubscribed."""
    with foreground_run(tmp_path) as (proc, lines, _):
        burners = cpu_burners() if loaded else []
        try:
            time.sleep(5 if loaded else 0)  # let the load bite
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=60)
            exited = time.monotonic() - sent
            gone = exited + gone_within(tmp_path, 30)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    print(f"\nCtrl-C ({'loaded' if loaded else 'idle'}): exited after {exited:.1f} s, all gone after {gone:.1f} s")
    assert proc.returncode == 0, "".join(lines) + rest
    assert_stopped_all(rest)
    assert gone < 30, rest
    assert "Traceback" not in rest, rest


@pytest.mark.integration
def test_a_second_ctrl_c_kills_everything_at_once(tmp_path: Path) -> None:
    with foreground_run(tmp_path) as (proc, lines, _):
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)  # stopping has begun (the federation takes longer than that)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        gone = time.monotonic() - sent + gone_within(tmp_path, 15)
    print(f"\nCtrl-C twice: all gone after {gone:.1f} s")
    assert proc.returncode == 130, "".join(lines) + rest
    assert "forced: killed" in rest and "Traceback" not in rest, rest
    assert gone < 15, rest


@pytest.mark.integration
def test_fl_app_stop_from_another_terminal_ends_a_foreground_run(tmp_path: Path) -> None:
    """`make stop` beside a foreground `make run`: the foreground says so in one line and exits 0."""
    with foreground_run(tmp_path) as (proc, lines, overrides):
        sent = time.monotonic()
        stopper = subprocess.run([str(FL_APP), "stop", *overrides], capture_output=True, text=True, timeout=120,
                                 cwd=PROJECT_ROOT, env={**os.environ, "COLUMNS": "200"})
        rest, _ = proc.communicate(timeout=60)
        gone = time.monotonic() - sent + gone_within(tmp_path, 30)
    print(f"\n`fl-app stop` beside a foreground run: all gone after {gone:.1f} s")
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1] == "stopped by `fl-app stop`", rest
    assert len(rest.strip().splitlines()) <= 3, rest  # at most a progress line or two before it
    assert stopper.returncode == 0, stopper.stdout + stopper.stderr
    assert_stopped_all(stopper.stdout)


@pytest.mark.integration
def test_a_foreground_run_survives_mongodb_being_unreachable(tmp_path: Path) -> None:
    """MongoDB paused (SIGSTOP) for a while: the progress line says so, then counts again; no traceback."""
    with foreground_run(tmp_path) as (proc, lines, _):
        mongo = pid_from_file(tmp_path / ".run" / "mongo.pid")
        assert mongo is not None and proc.stdout is not None
        os.kill(mongo, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "MongoDB unreachable" not in lines[-1]:
                lines.append(proc.stdout.readline())
        finally:
            os.kill(mongo, signal.SIGCONT)
        assert "MongoDB unreachable" in lines[-1], "".join(lines)
        deadline = time.monotonic() + 60
        lines.append(proc.stdout.readline())
        while time.monotonic() < deadline and not re.search(r"readings [\d,]+ ", lines[-1]):
            lines.append(proc.stdout.readline())
        assert re.search(r"readings [\d,]+ ", lines[-1]), "".join(lines)  # counting again
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        gone_within(tmp_path, 30)  # inside: on the way out, foreground_run kills what is left
    assert proc.returncode == 0 and "Traceback" not in "".join(lines) + rest, "".join(lines) + rest
