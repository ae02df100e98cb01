"""The Flink stream job. ``job.py`` runs in ``.venv-flink``; ``validation.py`` and
``settings.py`` are standard library only, so both environments import them."""
