"""The core every component imports: wire contracts and their validation, configuration, storage,
topics, the data-set catalogue, the model and its quality metrics, the service runner.

It imports only itself. Its modules the Flink job loads (``records``, ``validation``, ``storage``,
``atomic``, ``config``'s constants) import neither Hydra nor torch, so this ``__init__`` stays empty.
"""
