"""The settings object: environment parsing, the README table, the CLI help, security wiring."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from stream.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_and_environment():
    s = Settings.from_env({})
    assert s.partitions == 4 and s.store == "memory://" and s.web_enabled is False and s.bootstrap == "127.0.0.1:9092"
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "KPIMARGIN_PARTITIONS": "12",
                           "KPIMARGIN_WEB_ENABLED": "yes", "KPIMARGIN_CALL_UPDATE_THRESHOLD": "5.00"})
    assert s.bootstrap == "k1:9092,k2:9092" and s.partitions == 12 and s.web_enabled is True
    assert s.call_update_threshold == Decimal("5.00")
    assert Settings.from_env(s.env()) == s


@pytest.mark.parametrize("env, message", [
    ({"KPIMARGIN_PARTITIONS": "four"}, "KPIMARGIN_PARTITIONS"),
    ({"KPIMARGIN_PARTITIONS": "0"}, "at least 1"),
    ({"KPIMARGIN_STORE": "redis://"}, "KPIMARGIN_STORE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"KPIMARGIN_WEB_ENABLED": "maybe"}, "KPIMARGIN_WEB_ENABLED"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_readme_table_matches_the_settings():
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| (.+?) \|$", README.read_text(), flags=re.M)
    documented = {env: (default, meaning) for env, default, meaning in rows}
    for env, default, meaning in Settings.documentation():
        assert env in documented, f"{env} missing from the README table"
        shown, text = documented[env]
        assert shown == (f"`{default}`" if default else "(unset)"), env
        assert text == meaning, env
    assert set(documented) == {env for env, _, _ in Settings.documentation()}


def test_cli_help_shows_env_vars():
    out = subprocess.run([sys.executable, "-m", "stream", "worker", "--help"], capture_output=True, text=True, check=True).stdout
    for env, _, _ in Settings.documentation():
        assert f"[env: {env}]" in out


def test_security_settings_reach_the_kafka_clients(tmp_path):
    from stream.kafka import client_kwargs
    from stream.processor import faust_config

    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "KAFKA_SASL_USERNAME": "clearing", "KAFKA_SASL_PASSWORD": "s3cret"})
    kwargs = client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "clearing" and kwargs["sasl_plain_password"] == "s3cret"
    creds = faust_config(s)["broker_credentials"]
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.username == "clearing"
    config = faust_config(Settings.from_env({}))
    assert config["web_enabled"] is False and config["web_tables_enabled"] is False and config["web_bind"] == "127.0.0.1"
    assert config["broker_credentials"] is None


def test_no_object_codecs_and_no_code_evaluation():
    """Input is data: no pickle (or other object codec), no eval/exec, anywhere in the package."""
    import pathlib

    import stream

    root = pathlib.Path(stream.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("pickle", "marshal", "eval(", "exec(", "yaml.load(", "shelve"):
            assert banned not in text, f"{banned} in {path.name}"
    from stream.processor import faust_config

    config = faust_config(Settings.from_env({}))
    assert config["key_serializer"] == "raw" and config["value_serializer"] == "raw"
