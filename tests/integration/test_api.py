"""The API (`fl-app api`, a real uvicorn server) on real data in the real MongoDB-wire server and Kafka
broker: every endpoint, pagination, bad parameters, the admin key; a schemathesis run against
/openapi.json with no server error; the live page in headless Chromium while the producer runs
(screenshot: logs/test-artifacts/live/index.png under the project root)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from core import services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import ManagedProcess, free_port
from tests.integration.test_batch import seed_run
from tests.support.browser import launch
from tests.support.schemathesis_hooks import EDGE_DATETIMES, EDGE_VALUES
from tests.support.stack import tenant_overrides

pytestmark = pytest.mark.integration
BIN = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin"
KEY = "test-admin-key-" + uuid.uuid4().hex[:8]
ARTIFACTS = PROJECT_ROOT / "logs" / "test-artifacts" / "live"
# JSON numbers (and Python's NaN/Infinity extensions, which FastAPI's JSON parser accepts) for bodies.
EDGE_NUMBERS_JSON = ["0", "-0", "1", "-1", "1.5", "1e3", "86400", "86400.000001", "5e-324", "1e308", "1e309",
                     "-1e309", str(2**63), "1" + "0" * 400, "NaN", "Infinity", "-Infinity", "true", "null"]
HOOKS = Path(__file__).parents[1] / "support" / "schemathesis_hooks.py"
INT64_MAX = 2**63 - 1


class Api:
    def __init__(self, cfg: AppConfig, overrides: list[str], docs: dict[str, Any], home: Path) -> None:
        self.cfg, self.overrides, self.docs, self.home = cfg, overrides, docs, home
        self.base = f"http://127.0.0.1:{cfg.api.port}"
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)


def seed_rounds(store: storage.Storage) -> list[dict[str, Any]]:
    start = datetime(2026, 11, 28, 10, tzinfo=UTC)
    ticks: list[dict[str, Any]] = []
    for k in range(1, 6):  # ticks at minutes 1..5: rounds 1, 2, 3 aggregated, two skipped between
        aggregated = k in (1, 3, 5)
        rnd = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3}[k]
        ticks.append({"at": start + timedelta(minutes=k), "status": "aggregated" if aggregated else "skipped",
                      "round": rnd, "reason": "" if aggregated else "2 device(s) with a valid update, need 3",
                      "accepted": [1, 2, 3] if aggregated else [], "stale": [], "idle": [] if aggregated else [3],
                      "rejected": [{"device_id": 7, "reason": "array 0 has values that are not finite"}]
                      if k == 3 else []})
    nan = float("nan")  # a tick without replies has no latency (stored as NaN)
    ticks[3]["transport"] = {"online": 4, "sent": 8, "replies": 0, "expired": 1, "outstanding": 7,
                             "latency_p50": nan, "latency_p99": nan, "latency_max": nan, "delivery_p50": nan,
                             "work_p50": nan, "return_p50": nan}
    ticks[4]["transport"] = {"online": 5, "sent": 10, "replies": 9, "expired": 0, "outstanding": 1,
                             "latency_p50": 6.5, "latency_p99": 11.25, "latency_max": 12.0, "delivery_p50": 5.0,
                             "work_p50": 0.5, "return_p50": 1.0}
    store.fl_rounds.insert_many([dict(t) for t in ticks])
    store.save_server_state({"at": start, "round": 3, "online": 5, "pending": 4, "pending_devices": [1, 2],
                             "outstanding": 1, "aggregate_every_seconds": 60.0,
                             "next_aggregation_at": start + timedelta(minutes=6)})
    return ticks


@pytest.fixture(scope="module")
def api(stack: AppConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("api")
    tag = uuid.uuid4().hex[:8]
    overrides = [*tenant_overrides(stack, home, tag), "stream.dataset_records=3000",
                 f"api.port={free_port()}", "api.sample_seconds=1", "stream.records_per_second=40",
                 f"spark.scorer.checkpoint_dir={home / 'no-scorer'}"]
    cfg = load_config(overrides)
    services.provision(cfg)
    docs: dict[str, Any] = dict(seed_run(cfg, ["light out of range"]))
    with storage.Storage.from_config(cfg.mongo) as store:
        docs["ticks"] = seed_rounds(store)
    proc = ManagedProcess(name="api", argv=[str(BIN / "fl-app"), "api", *overrides], run_dir=home / ".run",
                          logs_dir=home / "logs", env={"FL_APP_API_KEY": KEY}, startup_timeout=60,
                          health_check=lambda: _answers(cfg), stop_timeout=15)
    proc.start()
    client = Api(cfg, overrides, docs, home)
    try:
        yield client
    finally:
        client.http.close()
        proc.stop()


def _answers(cfg: AppConfig) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{cfg.api.port}/api/status", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_status_tells_round_pending_collections_dead_letters_and_health(api: Api) -> None:
    deadline = time.monotonic() + 30
    while True:  # the sampler's slower reads (dead letters) come with its first sample
        body = api.get("/api/status").json()
        if body["dead_letters"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert body["current_round"] == 3
    assert body["pending"] == {"count": 4, "devices": [1, 2]} and body["devices_online"] == 5
    assert body["next_aggregation_at"].startswith("2026-11-28T10:06:00")
    assert body["message_layer"] == {  # Flower's messages at the last tick
        "devices_online": 5, "train_messages_sent": 10, "replies": 9, "pending": 1, "expired": 0,
        "reply_seconds_p50": 6.5, "reply_seconds_p99": 11.25, "reply_seconds_max": 12.0,
        "delivery_seconds_p50": 5.0, "work_seconds_p50": 0.5, "return_seconds_p50": 1.0}
    assert body["last_tick_status"] == "aggregated" and body["last_tick_at"].startswith("2026-11-28T10:05:00")
    assert body["collections"]["device_data"]["documents"] == len(api.docs["readings"])
    assert body["collections"]["predictions"]["documents"] == len(api.docs["predictions"])
    assert body["dead_letters"] == {"light out of range": 1}
    assert body["kafka_lag"] == {"flink_job": None, "spark_scorer": None}  # neither consumer has run
    health = {c["name"]: c["state"] for c in body["components"]}
    assert {"kafka", "mongo", "flink_job", "federation", "spark", "superset", "api"} <= set(health)
    assert health["api"] == "running"  # itself, from its pid file
    assert health["flink_job"] == "stopped"  # nothing of the pipeline runs in this test but the API


def test_history_pages_and_time_range(api: Api) -> None:
    first = api.get("/api/history", page_size=2).json()
    assert first["total"] == 5 and [t["at"][:16] for t in first["items"]] == ["2026-11-28T10:05", "2026-11-28T10:04"]
    newest = first["items"][0]
    assert newest["round"] == 3 and newest["status"] == "aggregated" and newest["devices"] == [1, 2, 3]
    assert newest["examples"] == 30 and newest["loss"] == pytest.approx(1 / 3)
    assert newest["message_layer"]["replies"] == 9 and newest["message_layer"]["reply_seconds_p50"] == 6.5
    silent = first["items"][1]["message_layer"]  # no replies: counts, and no latency rather than NaN
    assert silent["pending"] == 7 and silent["expired"] == 1 and silent["reply_seconds_p50"] is None
    third = api.get("/api/history", page_size=2, page=3).json()
    assert [t["at"][:16] for t in third["items"]] == ["2026-11-28T10:01"]
    assert third["items"][0]["message_layer"] is None  # a tick stored before the message layer was recorded
    assert api.get("/api/history", page_size=2, page=4).json()["items"] == []
    ranged = api.get("/api/history", since="2026-11-28T10:02:00", until="2026-11-28T10:03:30Z").json()
    assert ranged["total"] == 2 and ranged["items"][0]["rejected"] == [
        {"device_id": 7, "reason": "array 0 has values that are not finite"}]
    skipped = [t for t in api.get("/api/history").json()["items"] if t["status"] == "skipped"]
    assert len(skipped) == 2 and all("need 3" in t["reason"] and t["idle"] == [3] for t in skipped)
    assert api.get("/api/history", since="2026-11-28T11:00:00", until="2026-11-28T10:00:00").status_code == 400
    assert api.get("/api/history", page_size=501).status_code == 422
    assert api.get("/api/history", page=0).status_code == 422
    bad = api.get("/api/history", since="yesterday")
    assert bad.status_code == 422 and "since" in bad.text


def test_models_with_and_without_weights(api: Api) -> None:
    latest = api.get("/api/models/latest").json()
    assert latest["round"] == 3 and latest["num_devices"] == 5 and latest["weights"] is None
    assert latest["threshold"] == 3.5 and latest["rejected"] == 2
    binary = api.get("/api/models/2", weights="binary").json()["weights"]
    stored = storage.decode_weights({"data": base64.b64decode(binary["data_base64"]), "shapes": binary["shapes"],
                                     "dtype": binary["dtype"]})
    assert [a.tolist() for a in stored] == [[0.0, 0.0, 0.0]]
    as_json = api.get("/api/models/1", weights="json").json()["weights"]
    assert as_json["arrays"] == [[0.0, 0.0, 0.0]] and as_json["shapes"] == [[3]]
    missing = api.get("/api/models/99")
    assert missing.status_code == 404 and "round 99" in missing.json()["detail"]
    assert api.get("/api/models/abc").status_code == 422
    assert api.get("/api/models/0").status_code == 422
    assert api.get("/api/models/latest", weights="xml").status_code == 422


def test_devices_and_one_device(api: Api) -> None:
    listed = {d["device_id"]: d for d in api.get("/api/devices").json()}
    assert len(listed) == 53  # every device of the data set, with or without data
    readings, preds = api.docs["readings"], api.docs["predictions"]
    assert listed[1]["readings"] == int((readings["device_id"] == 1).sum()) and listed[1]["local_updates"] == 4
    assert any(d["readings"] == 0 and d["last_seen"] is None for d in listed.values())  # no data yet
    one = api.get("/api/devices/2", recent=5).json()
    assert one["readings"] == int((readings["device_id"] == 2).sum()) and len(one["recent_readings"]) == 5
    times = [r["event_time"] for r in one["recent_readings"]]
    assert times == sorted(times, reverse=True)
    mine = preds[preds["device_id"] == 2]
    assert one["predictions"] == len(mine) and one["anomalies"] == int(mine["is_anomaly"].sum())
    assert one["anomaly_rate"] == pytest.approx(mine["is_anomaly"].mean())
    assert len(one["recent_updates"]) == 3
    unknown = api.get("/api/devices/999")
    assert unknown.status_code == 404 and "no device 999" in unknown.json()["detail"]
    assert api.get("/api/devices/-1").status_code == 422


def test_predictions_filters_and_pages(api: Api) -> None:
    preds = api.docs["predictions"]
    everything = api.get("/api/predictions", limit=500).json()
    assert everything["total"] == len(preds) and len(everything["items"]) == len(preds)
    device = api.get("/api/predictions", device_id=3, anomalies_only="true", limit=10).json()
    expected = preds[(preds["device_id"] == 3) & preds["is_anomaly"]]
    assert device["total"] == len(expected) and all(p["is_anomaly"] and p["device_id"] == 3 for p in device["items"])
    since = datetime(2026, 11, 28, 10, 3, tzinfo=UTC)
    later = api.get("/api/predictions", since=since.isoformat(), limit=500).json()
    assert later["total"] == int((preds["event_time"] >= since).sum())
    second = api.get("/api/predictions", limit=7, page=2).json()
    first = api.get("/api/predictions", limit=7, page=1).json()
    assert len(second["items"]) == 7 and not {p["event_id"] + str(p["model_round"]) for p in first["items"]} & {
        p["event_id"] + str(p["model_round"]) for p in second["items"]}
    assert api.get("/api/predictions", limit=0).status_code == 422
    assert api.get("/api/predictions", anomalies_only="perhaps").status_code == 422


def test_lineage_of_a_round_a_prediction_and_a_device(api: Api) -> None:
    """Which updates (and readings) made a round, which rounds scored a reading, where a device's data went."""
    one = api.get("/api/models/1/lineage").json()
    assert one["readings_per_device"] == {"1": 10, "2": 5, "3": 5} and one["updates"]["total"] == 4
    assert [u["device_id"] for u in one["updates"]["items"]] == [1, 1, 2, 3]  # a device's two updates both count
    assert len(api.get("/api/models/1/lineage", limit=3, page=2).json()["updates"]["items"]) == 1
    missing = api.get("/api/models/99/lineage")
    assert missing.status_code == 404 and "round 99" in missing.json()["detail"]
    assert api.get("/api/models/1/lineage", limit=0).status_code == 422
    preds = api.docs["predictions"]
    twice = preds[preds["model_round"] == 2].iloc[0]["event_id"]  # scored by round 1, then by round 2
    scored = api.get(f"/api/predictions/{twice}").json()
    assert [p["prediction"]["model_round"] for p in scored] == [1, 2]
    assert scored[1]["lineage"] == "/api/models/2/lineage" and api.get(scored[1]["lineage"]).status_code == 200
    assert api.get("/api/predictions/no-such-reading").status_code == 404
    assert api.get("/api/predictions/" + "e" * 129).status_code == 422
    mine = api.get("/api/devices/1/contributions").json()
    assert mine["total"] == 4 and sorted(c["round"] for c in mine["items"]) == [1, 1, 2, 3]
    assert api.get("/api/devices/999/contributions").status_code == 404


def test_admin_actions_need_the_key_and_reach_the_control_document(api: Api) -> None:
    assert api.http.post("/api/admin/aggregate").status_code == 401
    assert api.http.post("/api/admin/aggregate", headers={"X-API-Key": "wrong"}).status_code == 401
    ok = api.http.post("/api/admin/aggregate", headers={"X-API-Key": KEY})
    assert ok.status_code == 202 and ok.json()["aggregate_now_requested_at"]
    interval = api.http.put("/api/admin/aggregation-interval", headers={"X-API-Key": KEY}, json={"seconds": 15})
    assert interval.status_code == 200 and interval.json()["aggregate_every_seconds"] == 15
    assert api.http.put("/api/admin/aggregation-interval", headers={"X-API-Key": KEY},
                        json={"seconds": -1}).status_code == 422
    with storage.Storage.from_config(api.cfg.mongo) as store:
        control = store.server_control()
        assert control["aggregate_every_seconds"] == 15 and control["aggregate_now_requested_at"]
    back = api.http.put("/api/admin/aggregation-interval", headers={"X-API-Key": KEY}, json={"seconds": None})
    assert back.status_code == 200 and back.json()["aggregate_every_seconds"] is None


def test_admin_actions_are_off_without_a_configured_key(api: Api) -> None:
    from fl_app.api.app import create_app

    cfg = load_config([*api.overrides, "api.api_key=''"])
    with TestClient(create_app(cfg, [1, 2, 3], sample=False)) as client:
        refused = client.post("/api/admin/aggregate", headers={"X-API-Key": "anything"})
        assert refused.status_code == 403 and "FL_APP_API_KEY" in refused.json()["detail"]
        assert client.get("/api/models/latest").status_code == 200  # the rest works


def test_docs_and_schemathesis_find_no_server_error(api: Api) -> None:
    assert api.get("/docs").status_code == 200 and "swagger" in api.get("/docs").text.lower()
    schema = api.get("/openapi.json").json()
    assert {"/api/status", "/api/history", "/api/models/latest", "/api/models/{round}", "/api/devices",
            "/api/devices/{device_id}", "/api/predictions", "/api/admin/aggregate",
            "/api/admin/aggregation-interval", "/api/live"} <= set(schema["paths"])
    proc = subprocess.run([str(BIN / "schemathesis"), "run", f"{api.base}/openapi.json", "--checks",
                           "not_a_server_error", "--max-examples", "25", "-H", f"X-API-Key: {KEY}"],
                          capture_output=True, text=True, timeout=600, cwd=api.home,
                          env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(HOOKS)})
    summary = re.search(r"\d+ generated[^\n]*", proc.stdout)
    print(f"schemathesis (edge hooks): {summary.group(0) if summary else proc.stdout[-500:]}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    tested = re.search(r"(\d+) passed", proc.stdout)  # every operation was exercised
    assert tested and int(tested.group(1)) >= 10, proc.stdout[-3000:]


def _get_cases(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(url, query) of every GET operation in ``schema`` with each of its parameters set to each edge
    value in turn (path parameters otherwise 1, query parameters otherwise absent)."""
    for template, operations in schema["paths"].items():
        params = operations.get("get", {}).get("parameters", [])
        names = {p["name"]: p["in"] for p in params if p["in"] in ("path", "query")}
        for name, where in names.items():
            for value in EDGE_VALUES:
                path = {n: "1" for n, w in names.items() if w == "path"}
                query = {name: value} if where == "query" else {}
                if where == "path":
                    path[name] = quote(value, safe="")
                yield template.format(**path), query


class EdgeRun:
    """Sends edge cases and tallies the answers; a 5xx or a dropped connection is a server error."""

    def __init__(self, api: Api) -> None:
        self.api, self.sent = api, 0
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []

    def send(self, method: str, url: str, **kwargs: Any) -> int | None:
        self.sent += 1
        try:
            got = self.api.http.request(method, url, **kwargs)
        except httpx.TransportError:  # uvicorn closes a connection after a 500: the case before's fault?
            try:
                got = self.api.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:  # twice: this case's own
                self.errors.append(f"{type(exc).__name__} {method} {url} {str(kwargs)[:120]}")
                return None
        self.statuses[got.status_code] = self.statuses.get(got.status_code, 0) + 1
        if got.status_code >= 500:
            self.errors.append(f"{got.status_code} {method} {url} {str(kwargs)[:120]}: {got.text[:200]}")
        return got.status_code

    def report(self, what: str) -> str:
        line = (f"edge-value cases: {self.sent} {what}, statuses {dict(sorted(self.statuses.items()))}, "
                f"server errors {len(self.errors)}")
        print(line)
        return line + "\n" + "\n".join(self.errors[:40])


def test_every_get_parameter_takes_every_edge_value_without_a_server_error(api: Api) -> None:
    cases = list(_get_cases(api.get("/openapi.json").json()))
    since_until = [("/api/history", {"since": a, "until": b}) for a in EDGE_DATETIMES for b in EDGE_DATETIMES[::5]]
    deepest = [("/api/history", {"page": "1000000", "page_size": str(api.cfg.api.max_page_size)}),
               ("/api/predictions", {"page": "1000000", "limit": str(api.cfg.api.max_page_size)})]
    run = EdgeRun(api)
    for url, query in cases + since_until + deepest:
        run.send("GET", url, params=query)
    report = run.report("GET requests")
    assert len(cases) >= 14 * len(EDGE_VALUES)  # every parameter of every GET route
    assert not run.errors, report
    assert run.statuses.get(200, 0) > 0 and run.statuses.get(422, 0) > 0  # edges inside the bounds pass, past not
    for url, query in deepest:
        assert api.http.get(url, params=query).json()["items"] == []  # the deepest page exists, empty


def test_admin_bodies_take_edge_values_without_a_server_error(api: Api) -> None:
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    seconds = EDGE_NUMBERS_JSON + [json.dumps(v) for v in EDGE_VALUES]  # numbers, then text
    bodies = [f'{{"seconds": {n}}}' for n in seconds] + [
        "", "{", "null", "[]", "{}", '"x"', "[" * 100_000, '{"seconds": 1}' * 2, '{"seconds": 15, "extra": 1}']
    run, accepted = EdgeRun(api), list[str]()
    for body in bodies:
        if run.send("PUT", "/api/admin/aggregation-interval", headers=headers, content=body.encode()) == 200:
            accepted.append(body)
    for key in [b"", b"a b", b"x" * 10_000, "é".encode("latin-1"), b"\xff\xfe", KEY.encode() + b"x"]:
        assert run.send("POST", "/api/admin/aggregate", headers={"X-API-Key": key}) == 401
    report = run.report("admin bodies and keys")
    assert not run.errors, report
    assert set(accepted) <= {'{"seconds": 1}', '{"seconds": 1.5}', '{"seconds": 1e3}', '{"seconds": 86400}',
                             '{"seconds": null}', '{"seconds": 15, "extra": 1}'}, accepted
    back = api.http.put("/api/admin/aggregation-interval", headers=headers, json={"seconds": None})
    assert back.status_code == 200


def test_out_of_range_parameters_get_422_with_a_message(api: Api) -> None:
    def detail(path: str, **params: Any) -> dict[str, Any]:
        got = api.get(path, **params)
        assert got.status_code == 422, (path, params, got.status_code, got.text)
        first: dict[str, Any] = got.json()["detail"][0]
        return first

    for path, name, value in [("/api/history", "since", "0001-01-01T00:00:00+14:00"),
                              ("/api/history", "until", "9999-12-31T23:59:59-14:00"),
                              ("/api/history", "until", "9999-12-31T23:59:59.999999-00:01"),
                              ("/api/predictions", "since", "0001-01-01T00:00:00.5+14:00")]:
        found = detail(path, **{name: value})
        assert found["loc"] == ["query", name] and "outside years 1..9999 in UTC" in found["msg"], found
    assert detail("/api/models/9223372036854775808")["msg"] == \
        "Input should be less than or equal to 9223372036854775807"
    assert detail("/api/devices/9223372036854775808")["loc"] == ["path", "device_id"]
    assert detail("/api/predictions", device_id=str(2**63))["loc"] == ["query", "device_id"]
    assert detail("/api/history", page_size=str(2**63))["loc"][-1] == "page_size"
    assert detail("/api/history", page="1000001")["loc"] == ["query", "page"]
    # Inside the bounds: the extremes themselves, naive times taken as UTC.
    assert api.get("/api/history", since="0001-01-01T00:00:00", until="9999-12-31T23:59:59.999999Z").json()[
        "total"] == 5
    assert api.get("/api/history", since="0001-01-01T00:00:00-14:00").json()["total"] == 5
    assert api.get("/api/predictions", device_id=str(INT64_MAX)).json()["total"] == 0
    assert api.get(f"/api/models/{INT64_MAX}").status_code == 404
    interval = api.http.put("/api/admin/aggregation-interval", headers={"X-API-Key": KEY,
                            "Content-Type": "application/json"}, content=b'{"seconds": NaN}')
    assert interval.status_code == 422 and "finite" in interval.json()["detail"][0]["msg"], interval.text


def test_live_page_shows_rates_newest_messages_and_the_loss_chart(api: Api) -> None:
    from playwright.sync_api import sync_playwright

    producer = ManagedProcess(name="kafka_producer", argv=[str(BIN / "fl-app"), "produce", *api.overrides],
                              run_dir=api.home / ".run", logs_dir=api.home / "logs", startup_timeout=5)
    producer.start()
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(api.base + "/")
            rate, deadline = 0.0, time.monotonic() + 60
            while time.monotonic() < deadline:  # the page refreshes by itself every 3 s
                cells = page.locator("#topics tr").first.locator("td.per-second")
                text = cells.inner_text() if cells.count() else "-"
                rate = float(text.replace(",", "")) if text not in ("-", "") else 0.0
                if rate > 0 and page.locator("#messages tr").count() > 0:
                    break
                page.wait_for_timeout(1000)
            assert rate > 0, page.content()[-3000:]
            assert page.locator("#messages tr").count() >= 1
            assert "device_id" in page.locator("#messages tr").first.inner_text()
            assert page.locator("#loss circle").count() == 3  # one point per global round
            assert page.locator("#round").inner_text() == "3"
            assert page.locator("#replies").inner_text() == "9 / 10"
            assert page.locator("#reply-p50").inner_text() == "6.5 s"
            assert page.locator("#error").inner_text() == ""
            page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
            browser.close()
    finally:
        producer.stop()
