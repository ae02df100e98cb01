"""The job on a Flink session cluster (``flink.jobmanager=host:port``), through the JobManager's REST API.

On a mini-cluster the job lives and dies with ``fl-app flink``. On a session cluster it outlives the
client that submitted it: a client killed with -9 leaves the job running, and a new client that
submitted again would run a second copy on the same consumer group and sinks. So the client first
looks for a job of its name that has not ended and follows that one; it submits only when there is
none, and cancels the job it follows when it is asked to stop (SIGTERM). While the job runs the client
waits; when the job ends (failed for good, cancelled by someone else) the client exits with an error,
and the supervisor starts it again, which submits a new job from the newest retained checkpoint.

Standard library only (it runs in the Flink environment).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stream.flink.job")
ENDED = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})  # Flink's globally terminal job states
POLL_SECONDS = 2.0


class Cluster:
    """A JobManager's REST endpoint, ``host:port``."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.base = f"http://{address}"
        self.timeout = timeout

    def call(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (the configured cluster)
            body = response.read()
        return json.loads(body) if body else None

    def live_job(self, name: str) -> str | None:
        """The id of a job called ``name`` that has not ended (None: none)."""
        jobs = [j for j in self.call("/jobs/overview")["jobs"] if j["name"] == name and j["state"] not in ENDED]
        if len(jobs) > 1:  # not made by us (we never submit beside a live one); say so, follow the newest
            log.warning("%d live jobs called %r on %s: following the newest", len(jobs), name, self.base)
        return max(jobs, key=lambda j: j["start-time"])["jid"] if jobs else None

    def state(self, job_id: str) -> str:
        return str(self.call(f"/jobs/{job_id}")["state"])

    def cancel(self, job_id: str) -> None:
        self.call(f"/jobs/{job_id}?mode=cancel", method="PATCH")


def run(address: str, name: str, submit: Callable[[], str]) -> None:
    """Follow the live job called ``name`` on the cluster at ``address``, or ``submit()`` one (returns
    its id); cancel it on SIGTERM; return when it ends (exit 1 unless we cancelled it)."""
    cluster = Cluster(address)
    job_id = cluster.live_job(name)
    if job_id is not None:
        log.info("job %s (%s) already runs on %s: following it, not submitting another", job_id, name, address)
    else:
        job_id = submit()
        log.info("submitted job %s (%s) to %s", job_id, name, address)
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        log.info("stopping: cancelling job %s", job_id)
        try:
            cluster.cancel(job_id)
        except (OSError, urllib.error.URLError) as exc:
            log.error("cannot cancel job %s on %s: %s", job_id, address, exc)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    last, unreachable_since = "", None
    while True:
        try:
            state = cluster.state(job_id)
            unreachable_since = None
        except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
            # The JobManager restarting or a network cut: keep waiting; the job itself goes on.
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > 60:
                log.warning("the JobManager at %s has not answered for 60 s: %s", address, exc)
                unreachable_since = time.monotonic()
            state = last
        if state != last:
            log.info("job %s: %s", job_id, state)
            last = state
        if state in ENDED:
            if stopping and state == "CANCELED":
                return
            sys.exit(f"job {job_id} ended {state} on {address}")
        time.sleep(POLL_SECONDS)
