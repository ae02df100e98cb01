"""The processes that only add up or score models never import torch (~300 MB of private memory each for
this build of torch, issue 22): the ServerApp, the scorer's driver and its Python workers' daemon."""

from __future__ import annotations

import os
import subprocess
import sys

from core.config import PROJECT_ROOT

PROBE = """
import sys
import analytics.scorer, analytics.worker_daemon, server.server_app
from core.config import load_config
from server import rounds
spec = load_config([]).fl.model
state = rounds.initial_state(spec)  # round 0: made in a child process
assert "torch" not in sys.modules, "torch was imported"
import torch
from core import model
assert all((a == b).all() for a, b in zip(state.weights, model.initial_weights(spec), strict=True))
print("ok")
"""


def test_server_and_scorer_modules_and_round_0_leave_torch_out() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


ORCHESTRATION_PROBE = """
import sys
from core.config import load_config
from fl_app import pipeline, supervisor
from fl_app.federation import deployment, settings
cfg = load_config([])
assert settings.devices(cfg), "no devices"
pipeline.processes(cfg, [])  # what `fl-app supervise` builds before it watches
deployment.processes(cfg)  # what `fl-app fl serve` builds
heavy = sorted({"pandas", "flwr", "grpc", "torch"} & {m.split(".")[0] for m in sys.modules})
assert not heavy, f"imported {heavy}"
print("ok")
"""


def test_supervisor_and_federation_launcher_leave_pandas_and_flwr_out() -> None:
    """The supervisor and the federation's launcher stay up for the whole run and only start processes:
    pandas (~60 MB private) and flwr (~40 MB) belong to the processes they start."""
    out = subprocess.run([sys.executable, "-c", ORCHESTRATION_PROBE], capture_output=True, text=True, timeout=120,
                         cwd=PROJECT_ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


DAEMON_PROBE = """
import os
import analytics.worker_daemon
threads = os.listdir("/proc/self/task")
assert len(threads) == 1, [open(f"/proc/self/task/{t}/comm").read().strip() for t in threads]
print("ok")
"""


def test_scorer_worker_daemon_starts_no_thread_before_it_forks() -> None:
    """The daemon imports pandas and pyarrow for its workers to share; a thread started by an import
    (pyarrow's jemalloc starts one) would be missing in every forked worker. Spark's environment for
    the workers (OMP_NUM_THREADS=1, analytics/session.py) is the one here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:true"}  # inherited
    out = subprocess.run([sys.executable, "-c", DAEMON_PROBE], capture_output=True, text=True, timeout=120,
                         cwd=PROJECT_ROOT, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
