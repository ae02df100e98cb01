"""The core every component imports: wire contracts and their validation (``records``, ``validation``,
``messages``), configuration (``config``), storage, topics, the data-set catalogue (``dataset``), the
model and its quality metrics, certificates, the service runner and local servers (``services``,
``processes``), what every command and component shares (``commands``, ``component``, ``logs``,
``atomic``) and the core's own commands (``cli``: ``fl-app services``, ``fl-app data``).

It imports only itself. Its modules the Flink job loads (``records``, ``validation``, ``storage``,
``atomic``) import neither Hydra nor torch, so this ``__init__`` stays empty.
"""
