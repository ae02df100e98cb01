"""The Flink stream job. ``job.py`` runs in ``.venv-flink`` (importing ``core.records``,
``core.validation``, ``core.storage`` and ``core.atomic`` from the project); ``launch.py`` prepares
it in the main environment; ``settings.py`` (with ``core.atomic``) and ``interpreter.py`` are
standard library only, so both environments import them."""
