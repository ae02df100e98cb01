"""The federation's device side: the ClientApp (``client_app``) and its reader of its own window
partition (``windows``), the warm ClientApp executor (``executor``) and SuperNode launcher
(``supernodes``), and the ClientApp of `fl-app evaluate` (``evaluation_app``). Imports only ``core``
and itself."""
