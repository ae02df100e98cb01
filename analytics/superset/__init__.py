"""Superset for the batch analytics: its own environment, set-up, dashboards as code, serving.

``bundle/`` is the dashboards' export bundle (databases, datasets, charts,
dashboards as YAML), imported at every start; ``superset_config.py`` is the
configuration Superset reads; :mod:`analytics.superset.server` runs it.
"""
