"""The FastAPI service (``fl-app api``): the pipeline's state over HTTP, and a live page at ``/``.

- :mod:`fl_app.api.app`: the application (routers, static page, errors), ``serve``;
- :mod:`fl_app.api.deps`: what a request may depend on (config, storage, sampler, the admin key);
- :mod:`fl_app.api.sampler`: a background thread sampling counts, offsets, lag and health, so that
  rates per minute and per second are measured, and requests stay cheap;
- :mod:`fl_app.api.schemas`: the Pydantic response models;
- :mod:`fl_app.api.routers`: one router per resource (status, history, models, devices,
  predictions, admin, live).

Every MongoDB read goes through :class:`core.storage.Storage`.
"""
