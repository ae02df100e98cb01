"""The fetch backoff override (core/fetch_backoff.py) finds Flower's fetches where it expects them:
this fails when a Flower upgrade moves them, instead of the latency silently coming back."""

from __future__ import annotations

import functools
import importlib
import inspect

import pytest

from core import fetch_backoff


@pytest.mark.parametrize("where", [fetch_backoff.CLIENTAPP_FETCH, fetch_backoff.SERVERAPP_FETCH])
def test_shorten_rebinds_the_fetch_with_the_short_backoff(where: tuple[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(where[0])
    original = getattr(module, where[1])
    monkeypatch.setattr(module, where[1], original)  # restored after the test
    assert {"initial_backoff", "backoff_cap"} <= set(inspect.signature(original).parameters)
    assert fetch_backoff.shorten(where)
    patched = getattr(module, where[1])
    assert isinstance(patched, functools.partial) and patched.func is original
    assert patched.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.5}
    assert fetch_backoff.shorten(where) and getattr(module, where[1]) is patched  # once only


def test_a_fetch_that_moved_leaves_flowers_default_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    assert not fetch_backoff.shorten(("flwr.supercore.constant", "no_such_fetch"))
    assert "default fetch backoff" in caplog.text
