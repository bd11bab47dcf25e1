"""The settings object: environment parsing, the table in docs/settings.md, the CLI help, security wiring."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from stream.settings import Settings

README = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_defaults_and_environment():
    s = Settings.from_env({})
    assert s.partitions == 4 and s.store == "memory://" and s.http_port == 0 and s.bootstrap == "127.0.0.1:9092"
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "KPIMARGIN_PARTITIONS": "12",
                           "KPIMARGIN_HTTP_PORT": "8080", "KPIMARGIN_CALL_UPDATE_THRESHOLD": "5.00"})
    assert s.bootstrap == "k1:9092,k2:9092" and s.partitions == 12 and s.http_url == "http://127.0.0.1:8080"
    assert s.call_update_threshold == Decimal("5.00")
    assert Settings.from_env(s.env()) == s


@pytest.mark.parametrize("env, message", [
    ({"KPIMARGIN_PARTITIONS": "four"}, "KPIMARGIN_PARTITIONS"),
    ({"KPIMARGIN_PARTITIONS": "0"}, "at least 1"),
    ({"KPIMARGIN_STORE": "redis://"}, "KPIMARGIN_STORE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"KPIMARGIN_HTTP_PORT": "http"}, "KPIMARGIN_HTTP_PORT"),
    ({"KPIMARGIN_HTTP_PORT": "70000"}, "KPIMARGIN_HTTP_PORT"),
    ({"KPIMARGIN_HTTP_PORT": "8080", "KPIMARGIN_HTTP_BIND": "0.0.0.0"}, "KPIMARGIN_HTTP_TOKEN"),
    ({"KPIMARGIN_HTTP_PORT": "8080", "KPIMARGIN_HTTP_BIND": "10.1.2.3"}, "KPIMARGIN_HTTP_TOKEN"),
    ({"KPIMARGIN_HTTP_ADVERTISED_URL": "worker-1:8080"}, "KPIMARGIN_HTTP_ADVERTISED_URL"),
    ({"KPIMARGIN_LOG_FORMAT": "xml"}, "KPIMARGIN_LOG_FORMAT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
     "KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SSL_KEYFILE": "/k.pem"}, "KAFKA_SSL_CERTFILE"),
    ({"KPIMARGIN_BATCH_MAX": "0"}, "KPIMARGIN_BATCH_MAX"),
    ({"KPIMARGIN_MAX_MESSAGE_BYTES": "400000"}, "KPIMARGIN_LOG_RECORD_MAX_BYTES"),
    ({"KPIMARGIN_STALL_TIMEOUT_S": "0"}, "KPIMARGIN_STALL_TIMEOUT_S"),
    ({"KPIMARGIN_GC_YOUNG_OBJECTS": "-1"}, "KPIMARGIN_GC_YOUNG_OBJECTS"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_readme_table_matches_the_settings():
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| (.+?) \|$", README.read_text(), flags=re.M)
    documented = {env: (default, meaning) for env, default, meaning in rows}
    for env, default, meaning in Settings.documentation():
        assert env in documented, f"{env} missing from the table in docs/settings.md"
        shown, text = documented[env]
        assert shown == (f"`{default}`" if default else "(unset)"), env
        assert text == meaning, env
    assert set(documented) == {env for env, _, _ in Settings.documentation()}


def test_cli_help_shows_env_vars():
    out = subprocess.run([sys.executable, "-m", "stream", "worker", "--help"], capture_output=True, text=True, check=True).stdout
    for env, default, _ in Settings.documentation():
        assert f"  {env} ({default or 'unset'}):" in out


def test_security_settings_reach_the_kafka_clients(tmp_path):
    from stream.kafka.clients import client_kwargs
    from stream.worker.app import faust_config

    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "KAFKA_SASL_USERNAME": "clearing", "KAFKA_SASL_PASSWORD": "s3cret"})
    kwargs = client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "clearing" and kwargs["sasl_plain_password"] == "s3cret"
    creds = faust_config(s)["broker_credentials"]
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.username == "clearing"
    config = faust_config(Settings.from_env({}))
    assert config["web_enabled"] is False and config["web_tables_enabled"] is False
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
    from stream.worker.app import faust_config

    config = faust_config(Settings.from_env({}))
    assert config["key_serializer"] == "raw" and config["value_serializer"] == "raw"


def _throwaway_tls(tmp_path):
    """A self-signed CA and a client certificate signed by it (openssl), for the TLS wiring."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=kpimargin-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=worker")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "client.pem", "-days", "2")
    return tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_and_sasl_reach_every_kafka_client_the_worker_creates(tmp_path, protocol):
    """faust's clients and the router's plain aiokafka consumer get the same protocol, SASL
    credentials and TLS context (CA, client certificate), and verify the broker's name."""
    import ssl

    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.worker.app import faust_config
    from stream.worker.router import Router
    from stream.worker.stats import Stats

    ca, cert, key = _throwaway_tls(tmp_path)
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SSL_CAFILE": str(ca), "KAFKA_SSL_CERTFILE": str(cert),
           "KAFKA_SSL_KEYFILE": str(key)}
    if protocol == "SASL_SSL":
        env.update(KAFKA_SASL_MECHANISM="SCRAM-SHA-256", KAFKA_SASL_USERNAME="clearing", KAFKA_SASL_PASSWORD="s3cret")
    s = Settings.from_env(env)

    async def router_client():
        return Router(None, s, Stats(), None).client()._client  # noqa: SLF001 - the consumer's own client

    router = asyncio.run(router_client())
    faust_auth = credentials_to_aiokafka_auth(faust_config(s)["broker_credentials"])
    for client_protocol, context, mechanism, user in (
        (router._security_protocol, router._ssl_context, router._sasl_mechanism, router._sasl_plain_username),
        (faust_auth["security_protocol"], faust_auth["ssl_context"], faust_auth.get("sasl_mechanism"),
         faust_auth.get("sasl_plain_username")),
    ):
        assert client_protocol == protocol
        assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        assert any(c.get("subject") == ((("commonName", "kpimargin-test-ca"),),) for c in context.get_ca_certs())
        if protocol == "SASL_SSL":
            assert (mechanism, user) == ("SCRAM-SHA-256", "clearing")
