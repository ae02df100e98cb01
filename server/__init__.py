"""The federation's server side: the clocked Flower ServerApp (``server_app``), its aggregation
(``aggregation``: ``TimedAggregation`` and the ``Clock``), rounds persisted and resumed (``rounds``), and
the ServerApp of `fl-app evaluate` (``evaluation_app``). Imports only ``core`` and itself."""
