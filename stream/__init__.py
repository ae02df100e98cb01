"""The stream component: the replay producer (``producer``), the Flink job (``flink``), their
commands (``cli``) and how `fl-app run` starts them (``component``).

No imports here on purpose: the Flink job imports this package in ``.venv-flink``, which has no Hydra.
"""
