"""The program on top of the components: the ``fl-app`` command tree (``cli``, with the list of
components in ``components``), `fl-app run` and its stop (``pipeline``), the supervisor
(``supervisor``), what flows (``flow``), the federation (``federation``: it knows both Flower apps)
and the API (``api``). It may import anything; neither the core nor a component imports it.
"""
