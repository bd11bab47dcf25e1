"""What went wrong when a connection to a broker failed around TLS, in one line, for the
broker check (:func:`stream.kafka.clients.check_broker`): a broker certificate the client
cannot verify, one made for another host, a listener that does not speak TLS (or speaks
only TLS), a broker that refuses the client certificate. Asking again cannot mend any of
these, so the check stops at once (status 2) instead of retrying until its timeout.

What aiokafka 0.14 raises, measured against Apache Kafka 4.4 (``KafkaCluster(tls=True)``,
``tls_client_auth=True`` for the last case; ``tests/test_tls.py`` runs each through the
real command, the client-certificate one against a stand-in TLS server):

* a certificate that does not verify, or is not for the host: ``ssl.SSLCertVerificationError``
  straight from the connect (``verify_code`` 62/64 for a host name/IP address mismatch);
* an SSL client at a PLAINTEXT listener: ``ConnectionResetError`` (Kafka reads the TLS
  ClientHello as an oversized request and drops the connection); a plain ApiVersions
  request on a fresh connection then tells that the listener speaks Kafka without TLS;
* a PLAINTEXT client at a TLS listener: ``KafkaConnectionError("Connection at ... closed")``
  (the broker's TLS engine rejects the request; aiokafka reads the alert as the size of a
  ~350 MB answer, then the close); a TLS handshake on a fresh connection then succeeds;
* a listener that wants a client certificate and gets none or one it does not trust:
  ``KafkaConnectionError`` whose ``__context__`` is an ``ssl.SSLError`` carrying the
  broker's TLS alert (``SSLV3_ALERT_BAD_CERTIFICATE``, ``..._CERTIFICATE_UNKNOWN``; TLS 1.3
  reports it after the client's side of the handshake, at the first read).
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.errors import KafkaConnectionError, KafkaError

from stream.kafka import shim
from stream.settings import Settings

NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# TLS alerts a broker sends about the client's certificate (mutual TLS)
CLIENT_CERT_ALERTS = ("BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_REQUIRED", "UNKNOWN_CA",
                      "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED")


def ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (itself, or one it was raised from or during)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


async def tls_problem(settings: Settings, host: str, port: int, timeout_ms: int, exc: BaseException) -> str | None:
    """Why connecting to ``host:port`` with the settings failed with ``exc``, when it is a TLS
    matter (one line, naming the settings to check), else None (e.g. nothing listens there,
    or nothing answers: the caller asks again until its timeout)."""
    broker = f"the broker at {host}:{port}"
    protocol = settings.security_protocol
    failure = ssl_error(exc)
    if isinstance(failure, ssl.SSLCertVerificationError):
        detail = failure.verify_message or failure.reason or str(failure)
        if failure.verify_code in NAME_MISMATCH:
            return (f"{broker} shows a TLS certificate that is not for {host} ({detail.rstrip('.')}): name the "
                    "broker in KAFKA_BOOTSTRAP_SERVERS as its certificate does")
        return (f"{broker} shows a TLS certificate that does not verify ({detail}): check KAFKA_SSL_CAFILE="
                f"{settings.ssl_cafile or '(unset: the system CAs)'}, it must hold the CA that signed the broker's")
    reason = (failure.reason or "") if failure is not None else ""
    if "SSL" in protocol:
        alert = reason.split("ALERT_", 1)[1] if "ALERT_" in reason else ""
        if alert in CLIENT_CERT_ALERTS:
            said = alert.lower().replace("_", " ")
            if settings.ssl_certfile:
                return (f"{broker} refused the client certificate KAFKA_SSL_CERTFILE={settings.ssl_certfile} (TLS "
                        f"alert: {said}): it wants one signed by a CA it trusts")
            return (f"{broker} wants a client certificate (mutual TLS; TLS alert: {said}): set KAFKA_SSL_CERTFILE "
                    "and KAFKA_SSL_KEYFILE")
        if isinstance(exc, (ConnectionResetError, KafkaConnectionError)) or failure is not None:
            if await _speaks_plain_kafka(host, port, timeout_ms):
                return (f"{broker} does not speak TLS (it answers Kafka without): set KAFKA_SECURITY_PROTOCOL="
                        f"{protocol.replace('SSL', 'PLAINTEXT')}, or name the broker's TLS listener in "
                        "KAFKA_BOOTSTRAP_SERVERS")
        if failure is not None and not isinstance(failure, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return f"the TLS handshake with {broker} failed ({reason or failure}): check KAFKA_SECURITY_PROTOCOL"
        return None
    if isinstance(exc, KafkaConnectionError) and await _speaks_tls(host, port, timeout_ms):
        return (f"{broker} closed the connection: its listener wants TLS: set KAFKA_SECURITY_PROTOCOL="
                f"{'SASL_SSL' if protocol.startswith('SASL') else 'SSL'} and KAFKA_SSL_CAFILE")
    return None


async def _speaks_plain_kafka(host: str, port: int, timeout_ms: int) -> bool:
    """Whether the listener answers ApiVersions without TLS (a SASL listener does too)."""
    try:
        conn = await shim.connect(host, port, timeout_ms, {"security_protocol": "PLAINTEXT"})
    except (OSError, KafkaError, asyncio.TimeoutError):
        return False
    conn.close()
    return True


async def _speaks_tls(host: str, port: int, timeout_ms: int) -> bool:
    """Whether the listener completes a TLS handshake (its certificate unchecked: only
    whether it speaks TLS at all is asked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout_ms / 1000)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.transport.abort()  # no close_notify exchange to wait for
    return True
