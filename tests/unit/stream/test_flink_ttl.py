"""The window operator's state time-to-live asks PyFlink for no Py4J gateway (FLINK-40628).

In thread mode the operators run inside the TaskManager, and PyFlink's conversion of a TTL config
with background cleanup builds RocksDB's default compaction period through ``get_gateway()``,
which launches a gateway process from there: twice a pipeline start hung with the window task
INITIALIZING for good. Runs in the Flink environment (``.venv-flink``), as the operator does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT

FLINK_PYTHON = PROJECT_ROOT / ".venv-flink" / "bin" / "python"
CHECK = """
import pyflink.common.time as time_module
import pyflink.java_gateway as gateway

def refuse(*args, **kwargs):
    raise SystemExit("a Py4J gateway was asked for")

gateway.get_gateway = time_module.get_gateway = refuse
from stream.flink.job import dedup_ttl
{config}
strategies = ttl.get_cleanup_strategies()
# What pyflink.fn_execution.embedded.java_utils.to_java_state_ttl_config asks of it in the TaskManager:
assert strategies.get_rocksdb_compact_filter_cleanup_strategy() is None
assert strategies.get_incremental_cleanup_strategy().get_cleanup_size() == 5  # the heap backend's cleanup kept
assert strategies.in_full_snapshot() and ttl.get_ttl().to_milliseconds() == 3_600_000
print("no gateway")
"""


def run(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLINK_PYTHON), "-c", CHECK.format(config=config)], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_ROOT, env={"PYTHONPATH": str(PROJECT_ROOT)})


@pytest.mark.skipif(not Path(FLINK_PYTHON).exists(), reason="needs the Flink environment (make setup)")
def test_the_dedup_ttl_needs_no_gateway() -> None:
    proc = run("ttl = dedup_ttl(3_600_000)")
    assert proc.returncode == 0 and "no gateway" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(not Path(FLINK_PYTHON).exists(), reason="needs the Flink environment (make setup)")
def test_the_default_background_cleanup_asks_for_one() -> None:
    """The bug it guards against, shown: PyFlink's default TTL cleanup asks for the gateway."""
    proc = run("from pyflink.datastream.state import StateTtlConfig\nfrom pyflink.common.time import Time\n"
               "ttl = StateTtlConfig.new_builder(Time.milliseconds(3_600_000)).cleanup_full_snapshot().build()")
    assert proc.returncode != 0 and "gateway was asked for" in proc.stderr, proc.stdout + proc.stderr
