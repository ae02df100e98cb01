"""The processes that only add up or score models never import torch (~300 MB of private memory each for
this build of torch, issue 22): the ServerApp, the scorer's driver and its Python workers' daemon."""

from __future__ import annotations

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
