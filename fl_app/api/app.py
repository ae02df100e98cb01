"""The FastAPI application: routers by resource, the live page, the sampler's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from core.config import AppConfig
from core.storage import Storage
from fl_app.api.deps import Services
from fl_app.api.routers import admin, devices, history, lineage, live, models, predictions, status
from fl_app.api.sampler import Sampler
from fl_app.api.values import json_safe

log = logging.getLogger(__name__)


def create_app(cfg: AppConfig, devices_of_data_set: list[int], sample: bool = True) -> FastAPI:
    """The application for ``cfg``. ``sample=False``: no background sampling (rates stay unknown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Storage.from_config(cfg.mongo)
        sampler = Sampler(cfg, store)
        app.state.services = Services(cfg, store, sampler, sorted(devices_of_data_set))
        if sample:
            sampler.start()
        try:
            yield
        finally:
            if sample:
                sampler.stop()
            store.close()

    app = FastAPI(title="fl-iot-stream", version="0.1.0", lifespan=lifespan,
                  description="Streaming federated learning on IoT sensor data: the pipeline's state. "
                              "Admin actions need the X-API-Key header.")
    for router in (status.router, history.router, models.router, devices.router, predictions.router,
                   lineage.router, admin.router, live.router):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, made JSON-safe: it echoes the input, which may be NaN or infinity.
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(PyMongoError)
    async def mongo_unavailable(_: Request, exc: PyMongoError) -> JSONResponse:
        # The database, not the request, is at fault: 503, and say so.
        log.warning("MongoDB: %s", exc)
        return JSONResponse({"detail": f"MongoDB is unavailable: {type(exc).__name__}"}, status_code=503)

    return app


def serve(cfg: AppConfig, devices_of_data_set: list[int]) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's own handling)."""
    import uvicorn

    uvicorn.run(create_app(cfg, devices_of_data_set), host=cfg.api.host, port=cfg.api.port, log_level="info",
                access_log=False)
