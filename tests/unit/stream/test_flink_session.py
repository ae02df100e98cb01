"""The job's client on a session cluster, against a fake JobManager REST API (http.server)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stream.flink import session

NAME = "fl-iot-stream (group)"


class FakeJobManager:
    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.cancelled: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/jobs/overview":
                    return self.reply({"jobs": fake.jobs})
                job = next(j for j in fake.jobs if self.path == f"/jobs/{j['jid']}")
                return self.reply({"state": job["state"]})

            def do_PATCH(self) -> None:  # noqa: N802
                jid = self.path.split("/")[2].split("?")[0]
                fake.cancelled.append(jid)
                next(j for j in fake.jobs if j["jid"] == jid)["state"] = "CANCELED"
                self.reply({})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(session, "POLL_SECONDS", 0.05)
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def job(jid: str, state: str, start: int, name: str = NAME) -> dict[str, Any]:
    return {"jid": jid, "name": name, "state": state, "start-time": start}


def test_a_live_job_of_its_name_is_followed_not_submitted_again(fast_poll: None) -> None:
    jm = FakeJobManager([job("old", "CANCELED", 1), job("live", "RESTARTING", 2), job("other", "RUNNING", 3, "x")])
    submitted: list[str] = []

    def submit() -> str:
        submitted.append("new")
        return "new"

    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    session.run(jm.address, NAME, submit)
    assert submitted == []  # it followed "live"
    assert jm.cancelled == ["live"]  # and SIGTERM cancelled that one, not another group's job


def test_without_a_live_job_it_submits_and_exits_with_an_error_when_the_job_fails(fast_poll: None) -> None:
    jm = FakeJobManager([job("old", "FINISHED", 1)])

    def submit() -> str:
        jm.jobs.append(job("new", "RUNNING", 2))
        threading.Timer(0.2, lambda: jm.jobs[-1].update(state="FAILED")).start()
        return "new"

    with pytest.raises(SystemExit, match="job new ended FAILED"):  # the supervisor starts it again
        session.run(jm.address, NAME, submit)
    assert jm.cancelled == []
