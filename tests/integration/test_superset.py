"""Superset (`fl-app superset up`) in a real headless browser (Debian's chromium): log in, open each
dashboard of the repo's bundle, every chart renders with data and no error tile. The data: documents in
the real MongoDB-wire server, turned into the serving store by the real batch job (Spark).

Screenshots of each dashboard: logs/test-artifacts/superset/<slug>.png under the project root.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from core import services
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import free_port
from tests.integration.test_batch import seed_run
from tests.support.browser import launch
from tests.support.stack import tenant_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FL_APP = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin" / "fl-app"
ARTIFACTS = PROJECT_ROOT / "logs" / "test-artifacts" / "superset"
# What the browser must show for each dashboard: chart title -> how it draws (canvas: ECharts; rows: table;
# number: big number). From the bundle in analytics/superset/bundle/.
EXPECTED = {
    "fl-pipeline": {"Readings stored": "number", "Readings stored per minute": "canvas",
                    "Documents per collection": "rows", "Dead letters by reason": "rows"},
    "fl-devices": {"Anomaly rate per device": "canvas", "Readings per device": "canvas",
                   "Device statistics": "rows", "Local updates per device": "canvas"},
    "fl-federated-learning": {"Mean local loss per round": "canvas", "Participants per round": "canvas",
                              "Rejected and stale updates per round": "canvas",
                              "Anomaly threshold per round": "canvas"},
    "fl-anomalies": {"Anomalies per minute, by model round": "canvas", "Anomaly rate per minute": "canvas",
                     "Detection quality per model round (data set labels)": "rows"},
}
ERROR_TEXT = re.compile(r"unexpected error|data error|no results|error|not found", re.IGNORECASE)


def test_dashboards_render_with_data_in_a_real_browser(stack: AppConfig, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    tag = uuid.uuid4().hex[:8]
    password = secrets.token_urlsafe(12)
    port = free_port()
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 f"spark.batch.store_url=sqlite:///{tmp_path / 'serving.db'}", f"superset.port={port}"]
    cfg = load_config(overrides)
    services.provision(cfg)
    seed_run(cfg, ["voltage out of range"])

    def fl_app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True, timeout=600,
                              cwd=PROJECT_ROOT, env={**os.environ, "COLUMNS": "200", **(env or {})})

    batch = fl_app("spark", "batch")
    assert batch.returncode == 0, batch.stdout[-2000:] + batch.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    try:
        up = fl_app("superset", "up", env={"SUPERSET_ADMIN_PASSWORD": password})  # the password from the env
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert f"{base}/superset/dashboard/fl-pipeline/" in up.stdout and password not in up.stdout
        pid = (tmp_path / ".run" / "superset.pid").read_text()
        again = fl_app("superset", "up", env={"SUPERSET_ADMIN_PASSWORD": password})  # idempotent
        assert again.returncode == 0 and (tmp_path / ".run" / "superset.pid").read_text() == pid

        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{base}/login/")
            page.fill("#username", "wrong")
            page.fill("#password", "wrong")
            page.click('[data-test="login-button"]')
            page.wait_for_timeout(1500)
            assert "/login" in page.url  # a wrong login stays on the login page
            page.fill("#username", cfg.superset.admin_user)
            page.fill("#password", password)
            page.click('[data-test="login-button"]')
            page.wait_for_url(re.compile(r".*/superset/welcome/?.*"), timeout=60_000)

            for slug, charts in EXPECTED.items():
                page.goto(f"{base}/superset/dashboard/{slug}/")
                holders = '[data-test="dashboard-component-chart-holder"]'
                page.locator(holders).nth(len(charts) - 1).wait_for(timeout=60_000)  # (CSP: no JS strings)
                seen: dict[str, str] = {}
                for holder in page.query_selector_all(holders):
                    # Wait per chart until it drew (or failed): charts load one by one.
                    holder.wait_for_selector("canvas, tbody tr, .header-line, [role=alert], .ant-alert",
                                             timeout=60_000)
                    text = holder.inner_text()
                    title = text.split("\n", 1)[0].strip()
                    assert holder.query_selector("[role=alert], .ant-alert") is None, f"{slug}/{title}: {text}"
                    kind = ("canvas" if holder.query_selector("canvas") else
                            "rows" if holder.query_selector("tbody tr") else
                            "number" if re.search(r"\n\s*[\d,.]+\s*$", text) else "?")
                    assert not ERROR_TEXT.search(text.replace(title, "")), f"{slug}/{title}: {text[:300]}"
                    seen[title] = kind
                page.wait_for_timeout(1500)  # ECharts animates its bars and lines in
                page.screenshot(path=str(ARTIFACTS / f"{slug}.png"), full_page=True)
                assert seen == charts, slug

            # Live dashboards refresh by themselves (bundle metadata: refresh_frequency).
            api = page.request.get(f"{base}/api/v1/dashboard/fl-pipeline")
            assert api.ok
            assert json.loads(api.json()["result"]["json_metadata"])["refresh_frequency"] == 20
            browser.close()
        assert httpx.get(f"{base}/api/v1/dashboard/fl-pipeline", timeout=10).status_code == 401  # no login
    finally:
        down = fl_app("superset", "down")
    assert "stopped: superset" in down.stdout
    log = (tmp_path / "logs" / "superset.log").read_text()
    assert password not in log and "import-dashboards" in log
    home = Path(cfg.superset.home)
    assert (home / "secret_key").stat().st_mode & 0o077 == 0
    assert not (home / "admin_password").exists()  # given by the environment: nothing generated
