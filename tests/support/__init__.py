"""Helpers shared by the unit and integration tests and the benchmarks: private servers (``stack``),
hostile records (``poison``), reading a topic (``kafka``), waiting, leftover processes, the browser.
"""
