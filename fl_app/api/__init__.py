"""The FastAPI service (``fl-app api``): the pipeline's state over HTTP, and a live page at ``/``.

- :mod:`fl_app.api.app`: the application (routers, static page, errors), ``serve``;
- :mod:`fl_app.api.deps`: what a request may depend on (config, storage, sampler, the admin key);
- :mod:`fl_app.api.sampler`: a background thread sampling counts, offsets, lag and health, so that
  rates per minute and per second are measured, and requests stay cheap;
- :mod:`fl_app.api.schemas`: the Pydantic response models;
- :mod:`fl_app.api.values`: the parameter types, bounded by what MongoDB and JSON can hold;
- :mod:`fl_app.api.routers`: one router per resource (status, history, models, devices,
  predictions, admin, live);
- :mod:`fl_app.api.component` and :mod:`fl_app.api.cli`: how `fl-app run` starts it, and its command.

Every MongoDB read goes through :class:`core.storage.Storage`.
"""
