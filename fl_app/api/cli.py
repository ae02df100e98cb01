"""The API's command: ``fl-app api`` serves it in the foreground (``fl-app run`` starts it last)."""

from __future__ import annotations

import typer

from core.commands import command
from core.config import AppConfig

app = typer.Typer()


@command(app, log="api")
def api(cfg: AppConfig) -> None:
    """Serve the API (api.host:api.port; OpenAPI at /docs) and the live page (/) in the foreground."""
    from core import dataset
    from fl_app.api.app import serve

    serve(cfg, dataset.device_ids(cfg.stream, cfg.paths.cache_dir))
