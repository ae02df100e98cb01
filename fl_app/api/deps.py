"""What a request may depend on: the configuration, the storage, the sampler, the admin key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from core.config import AppConfig
from core.storage import Storage
from core.validation import INT64_MAX
from fl_app.api.sampler import Sampler


@dataclass
class Services:
    """One per application (``app.state.services``)."""

    cfg: AppConfig
    store: Storage
    sampler: Sampler
    devices: list[int]  # the data set's devices


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def require_admin(svc: ServicesDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Admin actions need the key of ``api.api_key`` ($FL_APP_API_KEY) in the ``X-API-Key`` header."""
    expected = svc.cfg.api.api_key
    if not expected:
        raise HTTPException(403, "admin actions are off: start the API with FL_APP_API_KEY (or api.api_key) set")
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(401, "a valid X-API-Key header is required for admin actions",
                            headers={"WWW-Authenticate": "X-API-Key"})


def page_bounds(svc: Services, page: int, page_size: int) -> tuple[int, int]:
    """(skip, limit) of a page (``page`` >= 1, ``page_size`` >= 1: values.PageNumber, PageSize); 422 past
    ``api.max_page_size`` or when the skip would not fit MongoDB's int64."""
    if page_size > svc.cfg.api.max_page_size:
        raise HTTPException(422, f"page_size must be at most {svc.cfg.api.max_page_size}")
    skip = (page - 1) * page_size
    if skip > INT64_MAX:  # only with an api.max_page_size in the trillions
        raise HTTPException(422, f"page {page} of {page_size} is past the last page MongoDB can skip to")
    return skip, page_size
