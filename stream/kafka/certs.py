"""Throwaway TLS material for a test or demo Kafka cluster on this machine (``openssl``):
a certificate authority, a broker certificate for 127.0.0.1 and localhost, and a client
certificate, all PEM, valid for a few days and never meant to leave the machine.

    files = tls_files(Path("tls"))       # made once; made again only if one is missing
    files.ca                              # what a client trusts (KAFKA_SSL_CAFILE)
    files.broker                          # the broker's key and certificate chain (ssl.keystore.type=PEM)

Used by :class:`stream.kafka.apache.KafkaCluster` (``tls=True``) and the tests.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 7
BROKER_HOSTS = ("localhost", "127.0.0.1")
# an EC key: made in milliseconds (an RSA one takes up to a second), and Kafka's PEM
# key store reads PKCS#8 EC keys
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class CertError(Exception):
    """TLS material could not be made (the message is one line)."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a throwaway TLS setup (all in one directory)."""

    ca: Path             # the CA's certificate: clients and brokers trust it
    ca_key: Path         # its key: signs more certificates (:func:`issue`)
    broker: Path         # the broker's private key, its certificate and the CA's (a PEM key store)
    client_cert: Path    # a client certificate signed by the CA (mutual TLS)
    client_key: Path

    def client_context(self, client_cert: bool = False) -> ssl.SSLContext:
        """A client's TLS context trusting the CA (showing the client certificate with
        ``client_cert``)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def missing_openssl() -> str | None:
    """Why TLS material cannot be made here (one line), or None when it can."""
    return None if shutil.which("openssl") else "openssl not found on PATH: it makes the throwaway TLS certificates"


def _openssl(directory: Path, *args: str) -> None:
    try:
        proc = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertError(f"openssl {args[0]}: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CertError(f"openssl {args[0]} failed (status {proc.returncode}): {last}")


def _config(directory: Path, name: str, extensions: list[str]) -> Path:
    """A minimal openssl configuration (the system's openssl.cnf is not needed)."""
    path = directory / f"{name}.cnf"
    path.write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = kpimargin-" + name + "\n[ext]\n"
                    + "".join(f"{line}\n" for line in extensions))
    return path


def throwaway_ca(directory: Path, name: str = "kpimargin throwaway CA") -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: ``(certificate, key)`` named after ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = name.replace(" ", "-")
    config = _config(directory, stem, ["basicConstraints = critical, CA:TRUE", "keyUsage = critical, keyCertSign, cRLSign",
                                       "subjectKeyIdentifier = hash"])
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    _openssl(directory, "req", "-x509", "-new", *KEY, "-keyout", key.name, "-out", cert.name, "-days", str(DAYS),
             "-config", config.name, "-extensions", "ext")
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], name: str, hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca`` (``(certificate, key)``), for these host
    names and IP addresses (a server's; none for a client's): ``(certificate, key)``."""
    directory.mkdir(parents=True, exist_ok=True)
    alt = ", ".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    config = _config(directory, name, ["basicConstraints = CA:FALSE", "keyUsage = critical, digitalSignature, keyEncipherment",
                                       "extendedKeyUsage = " + ("serverAuth, clientAuth" if hosts else "clientAuth"),
                                       "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid",
                                       *([f"subjectAltName = {alt}"] if alt else [])])
    cert, key, request = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    _openssl(directory, "req", "-new", *KEY, "-keyout", key.name, "-out", request.name, "-config", config.name)
    _openssl(directory, "x509", "-req", "-in", request.name, "-CA", str(ca[0].resolve()), "-CAkey", str(ca[1].resolve()),
             "-set_serial", str(secrets.randbits(63)), "-out", cert.name, "-days", str(DAYS), "-extfile", config.name,
             "-extensions", "ext")
    request.unlink()
    return cert, key


def tls_files(directory: Path) -> TlsFiles:
    """The CA, broker and client material in ``directory``: what is there already when every
    file is, else made afresh."""
    files = TlsFiles(ca=directory / "ca.pem", ca_key=directory / "ca.key", broker=directory / "broker-keystore.pem",
                     client_cert=directory / "client.pem", client_key=directory / "client.key")
    if all(path.is_file() for path in vars(files).values()):
        return files
    reason = missing_openssl()
    if reason:
        raise CertError(reason)
    ca = throwaway_ca(directory, "ca")
    broker_cert, broker_key = issue(directory, ca, "broker", BROKER_HOSTS)
    issue(directory, ca, "client")
    # Kafka's PEM key store: the private key (PKCS#8, unencrypted), then the chain
    files.broker.write_text(broker_key.read_text() + broker_cert.read_text() + files.ca.read_text())
    for path in (broker_key, files.ca_key, files.client_key, files.broker):
        path.chmod(0o600)
    return files
