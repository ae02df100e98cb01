"""The ClientApp reads no windows for a train message about to expire (its reply would be refused)."""

from __future__ import annotations

from clients.client_app import REPLY_MARGIN_SECONDS, expires_soon


def test_a_message_with_time_left_is_answered_with_windows() -> None:
    assert not expires_soon(created_at=1000.0, ttl=20.0, now=1005.0)  # 15 s left


def test_a_message_about_to_expire_or_expired_is_not() -> None:
    assert expires_soon(created_at=1000.0, ttl=20.0, now=1020.0 - REPLY_MARGIN_SECONDS + 0.1)
    assert expires_soon(created_at=1000.0, ttl=20.0, now=1030.0)  # already expired
