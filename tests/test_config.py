"""Configuration: read once from the environment; production refuses to start without secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from app.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPLETE = {
    "RELAY_ENV": "production",
    "PUBLIC_BASE_URL": "https://relay.example",
    "CALLBACK_USERNAME": "u",
    "CALLBACK_PASSWORD": "p",
    "CATAPULT_USER_ID": "u-1",
    "CATAPULT_API_TOKEN": "t",
    "CATAPULT_API_SECRET": "s",
    "API_KEYS": "k1, k2",
    "DASHBOARD_USERNAME": "d",
    "DASHBOARD_PASSWORD": "dp",
    "SECRET_KEY": "x",
}


def test_complete_production_settings_load():
    settings = load_settings(COMPLETE, instance_path="/tmp/x")
    assert settings.errors == []
    values = settings.values
    assert values["API_KEYS"] == ["k1", "k2"]
    assert values["FALLBACK_BASE_URL"] == "https://relay.example"
    assert values["RECEIPT_REQUESTED"] == "all"
    assert values["CALLBACK_TIMEOUT_MS"] == 10000
    assert values["DISPATCH"] == "inline"
    assert values["CATAPULT_API_URL"] == "https://api.catapult.inetwork.com"
    assert values["SQLALCHEMY_DATABASE_URI"] == "sqlite:////tmp/x/relay.sqlite3"


@pytest.mark.parametrize(
    "change,named",
    [
        ({"CALLBACK_PASSWORD": ""}, "CALLBACK_PASSWORD"),
        ({"API_KEYS": " , "}, "API_KEYS"),
        ({"PUBLIC_BASE_URL": "relay.example"}, "PUBLIC_BASE_URL"),
        ({"FALLBACK_BASE_URL": "ftp://x"}, "FALLBACK_BASE_URL"),
        ({"CATAPULT_API_URL": "nope"}, "CATAPULT_API_URL"),
        ({"CATAPULT_MPS": "fast"}, "CATAPULT_MPS"),
        ({"CALLBACK_TIMEOUT_MS": "20000"}, "CALLBACK_TIMEOUT_MS"),
        ({"RECEIPT_REQUESTED": "sometimes"}, "RECEIPT_REQUESTED"),
        ({"DISPATCH": "both"}, "DISPATCH"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ],
)
def test_each_bad_or_missing_value_is_named(change, named):
    errors = load_settings({**COMPLETE, **change}).errors
    assert len(errors) == 1 and errors[0].startswith(named)


def test_development_generates_secrets_once_and_every_process_agrees(tmp_path):
    first = load_settings({"RELAY_ENV": "development"}, instance_path=str(tmp_path))
    assert first.errors == []
    assert first.values["CALLBACK_PASSWORD"] == first.generated["CALLBACK_PASSWORD"]
    assert len(first.values["CALLBACK_PASSWORD"]) >= 16
    assert first.values["PUBLIC_BASE_URL"].startswith("http://127.0.0.1")
    # A second process (another gunicorn worker, a restart) reads the same values back and
    # reports nothing new.
    second = load_settings({"RELAY_ENV": "development"}, instance_path=str(tmp_path))
    assert second.generated == {}
    for name in ("CALLBACK_PASSWORD", "API_KEYS", "DASHBOARD_PASSWORD", "SECRET_KEY"):
        assert second.values[name] == first.values[name]
    assert (tmp_path / "dev-secrets.json").stat().st_mode & 0o777 == 0o600
    # A value from the environment still wins over the stored one.
    third = load_settings(
        {"RELAY_ENV": "development", "CALLBACK_PASSWORD": "mine"}, instance_path=str(tmp_path)
    )
    assert third.values["CALLBACK_PASSWORD"] == "mine"


def test_create_app_refuses_to_start_in_production_without_secrets(monkeypatch):
    for name in COMPLETE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)
    monkeypatch.setenv("RELAY_ENV", "production")
    with pytest.raises(ConfigError) as info:
        create_app()
    for name in ("PUBLIC_BASE_URL", "CALLBACK_PASSWORD", "API_KEYS", "CATAPULT_API_TOKEN"):
        assert name in str(info.value)


def _bare_env(tmp_path):
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RELAY_ENV": "production"}


def test_gunicorn_style_import_fails_naming_the_variables(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env=_bare_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CALLBACK_USERNAME is required" in result.stderr


def test_sandbox_and_migrations_start_in_a_bare_shell(tmp_path):
    flask = Path(sys.executable).with_name("flask")
    for args in (["sandbox", "--help"], ["db", "--help"]):
        result = subprocess.run(
            [str(flask), "--app", "wsgi", *args],
            cwd=ROOT,
            env=_bare_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
