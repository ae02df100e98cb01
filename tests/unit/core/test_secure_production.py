"""profile=production refuses an insecure setting: exit 2 naming the key, unless said in so many words."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from core.config import ConfigError, load_config
from fl_app.cli import app

KEY = "api.api_key=a-production-key-0123"


@pytest.mark.parametrize(("setting", "key"), [("fl.security.tls=false", "fl.security.tls"),
                                              ("fl.security.supernode_auth=false", "fl.security.supernode_auth"),
                                              ("kafka.sasl.enabled=false", "kafka.sasl.enabled")])
def test_production_refuses_tls_or_supernode_auth_off(setting: str, key: str) -> None:
    result = CliRunner().invoke(app, ["config", "profile=production", KEY, setting])
    assert result.exit_code == 2, result.output
    assert key in result.output and "allow_insecure" in result.output
    # Only an explicit allow_insecure lets it through; the testing profile never asks.
    insecure = ["fl.security.tls=false", "fl.security.supernode_auth=false"] if "tls" in key else [setting]
    assert load_config(["profile=production", KEY, *insecure, "fl.security.allow_insecure=true"])
    assert not load_config([setting]).fl.security.allow_insecure


def test_production_requires_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FL_APP_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["config", "profile=production"])
    assert result.exit_code == 2 and "api.api_key" in result.output
    with pytest.raises(ConfigError, match="api.api_key"):
        load_config(["profile=production", "api.api_key=too-short"])
    monkeypatch.setenv("FL_APP_API_KEY", "from-the-environment-0123")
    assert load_config(["profile=production"]).api.api_key == "from-the-environment-0123"
    assert load_config([]).api.api_key  # the testing profile takes it too, and needs none


def test_the_control_api_stays_on_loopback() -> None:
    with pytest.raises(ConfigError, match="fl.control_address"):
        load_config(["fl.control_address=0.0.0.0:9092"])
    assert load_config(["fl.control_address=127.0.0.1:9092"]).fl.control_address == "127.0.0.1:9092"
