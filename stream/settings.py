"""One typed settings object, read from environment variables with documented defaults.

Every field names its variable; ``kpimargin --help`` shows them as ``[env: VAR]`` and the
``docs/settings.md`` has the same table (a test keeps the two in step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, Mapping


def setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS", "", "Kafka bootstrap servers (host:port,...). Empty: the demo starts the embedded broker; the worker uses 127.0.0.1:9092."
    )
    app_id: str = setting("KPIMARGIN_APP_ID", "kpimargin", "Consumer group id and prefix of the table changelog topics.")
    topic_prefix: str = setting("KPIMARGIN_TOPIC_PREFIX", "", "Prefix added to every topic name (namespacing on a shared cluster).")
    partitions: int = setting("KPIMARGIN_PARTITIONS", 4, "Partitions of the ordered log, its changelog and the topics the processor creates.")
    replication_factor: int = setting("KPIMARGIN_REPLICATION_FACTOR", 1, "Replication factor of the topics the processor creates (3 on a production cluster).")
    store: str = setting("KPIMARGIN_STORE", "memory://", "Table store: memory:// or rocksdb:// (needs the rocksdb extra).")
    data_dir: str = setting("KPIMARGIN_DATA_DIR", "./data", "Directory for the worker's local state (rocksdb).")
    session_timeout_s: float = setting("KPIMARGIN_SESSION_TIMEOUT_S", 10.0, "Consumer-group session timeout; a group join takes about half of it.")
    commit_interval_s: float = setting("KPIMARGIN_COMMIT_INTERVAL_S", 1.0, "How often consumed offsets are committed.")
    fetch_max_wait_ms: int = setting(
        "KPIMARGIN_FETCH_MAX_WAIT_MS", 100, "Longest a fetch of the router's consumer (the input topics) waits for data (brokers that do not wake fetches on produce add it to latency)."
    )
    agent_fetch_max_wait_ms: int = setting(
        "KPIMARGIN_AGENT_FETCH_MAX_WAIT_MS", 100,
        "Longest a fetch of faust's consumer (margin.log for the log agent, and the state changelog) waits for KPIMARGIN_AGENT_FETCH_MIN_BYTES: the log records this worker's router writes are applied when it hands them over, so fetching them back only acknowledges them.",
    )
    agent_fetch_min_bytes: int = setting(
        "KPIMARGIN_AGENT_FETCH_MIN_BYTES", 65_536,
        "Least data a fetch of faust's consumer waits for (up to KPIMARGIN_AGENT_FETCH_MAX_WAIT_MS): fewer, larger fetches of records already applied.",
    )
    producer_linger_ms: float = setting(
        "KPIMARGIN_PRODUCER_LINGER_MS", 0.0,
        "How long the producer waits to fill a batch before sending it: the router's margin.log records and dead letters (outputs and state rows go in batches the worker closes itself). The router sends one record per log partition per step, so waiting only delays them: 5 ms measured 4 ms more p50 latency and no more throughput (bench/RESULTS.md).",
    )
    producer_batch_bytes: int = setting(
        "KPIMARGIN_PRODUCER_BATCH_BYTES", 262_144,
        "Largest record batch the worker's producer builds per topic-partition (outputs and state rows are sent a batch at a time).",
    )
    request_timeout_s: float = setting(
        "KPIMARGIN_REQUEST_TIMEOUT_S", 30.0,
        "How long a broker request (send, fetch, commit) may take before it fails; an undelivered send stops the worker, and a restart resumes from the last durable state.",
    )
    connect_timeout_s: float = setting(
        "KPIMARGIN_CONNECT_TIMEOUT_S", 10.0,
        "How long a command waits for the bootstrap servers to answer before it fails with one line (status 1).",
    )
    router_batch_max: int = setting(
        "KPIMARGIN_ROUTER_BATCH_MAX", 2000, "Most input messages the router forwards per fetch (one margin.log record per log partition per fetch)."
    )
    max_idle_ms: float = setting(
        "KPIMARGIN_MAX_IDLE_MS", 0.0,
        "How long the router waits, past an input partition with nothing buffered and nothing left to fetch, before forwarding newer records (Kafka Streams' max.task.idle.ms; 0: as soon as a fresh end offset shows that partition caught up).",
    )
    log_record_max_bytes: int = setting(
        "KPIMARGIN_LOG_RECORD_MAX_BYTES", 524_288, "Largest margin.log record the router writes (entries beyond it start a new record)."
    )
    batch_max: int = setting("KPIMARGIN_BATCH_MAX", 2000, "Most log entries applied before a batch is handed to the persister (a batch also ends whenever the log is drained).")
    stream_buffer_records: int = setting(
        "KPIMARGIN_STREAM_BUFFER_RECORDS", 32, "Most margin.log records faust buffers ahead of the engine (each holds up to a router batch of entries)."
    )
    persist_queue_max: int = setting(
        "KPIMARGIN_PERSIST_QUEUE_MAX", 8, "Most batches waiting to be made durable before the engine waits for the persister (back-pressure)."
    )
    stall_timeout_s: float = setting(
        "KPIMARGIN_STALL_TIMEOUT_S", 30.0, "When no log partition delivered a record for this long while one has records to apply, that one is sought back to its next offset; when faust's changelog recovery read nothing for this long with records left, the group is asked to rebalance; a rebalance without progress for twice this long stops the worker (status 70) for its supervisor to restart."
    )
    call_update_threshold: Decimal = setting(
        "KPIMARGIN_CALL_UPDATE_THRESHOLD", Decimal("0.01"), "Shortfall change (dollars) that publishes an UPDATED call."
    )
    dedup_horizon_s: int = setting(
        "KPIMARGIN_DEDUP_HORIZON_S", 604_800,
        "How long (event time) fill and movement ids are remembered for deduplication; older events are dead-lettered as outside_dedup_horizon. 0 remembers ids forever (memory grows with every id).",
    )
    max_message_bytes: int = setting("KPIMARGIN_MAX_MESSAGE_BYTES", 131_072, "Input messages larger than this go to the dead-letter topic.")
    http_port: int = setting(
        "KPIMARGIN_HTTP_PORT", 0,
        "Port of the worker's HTTP API (health, readiness, Prometheus metrics, live accounts, pre-trade what-if; docs/operations.md); 0: no HTTP server.",
    )
    http_bind: str = setting(
        "KPIMARGIN_HTTP_BIND", "127.0.0.1", "Address the HTTP API binds to; beyond loopback only with KPIMARGIN_HTTP_TOKEN set."
    )
    http_advertised_url: str = setting(
        "KPIMARGIN_HTTP_ADVERTISED_URL", "",
        "This worker's HTTP API as the other workers reach it (an account another worker owns is redirected there); empty: http://<bind>:<port>.",
    )
    http_token: str = setting(
        "KPIMARGIN_HTTP_TOKEN", "", "Bearer token /v1/ requests must carry (Authorization: Bearer <token>); empty: none asked (loopback only)."
    )
    ready_lag: int = setting(
        "KPIMARGIN_READY_LAG", 1000,
        "/readyz answers 200 only while every owned log partition and input partition is within this many records of its end.",
    )
    gc_young_objects: int = setting(
        "KPIMARGIN_GC_YOUNG_OBJECTS", 50_000,
        "Net allocations between collections of Python's youngest garbage-collector generation in the worker and in kpimargin replay (CPython's default: 700); at start (replay: once the topics are read) they also freeze what they have loaded (gc.freeze) out of every collection. A batch's messages, records and outputs live for thousands of allocations: at 700 they reach the oldest generation and make Python scan the whole heap every few tenths of a second of a drain, 18 % of the worker's CPU (bench/RESULTS.md). 0: CPython's thresholds, nothing frozen.",
    )
    log_format: str = setting("KPIMARGIN_LOG_FORMAT", "text", "Worker log lines: text, or json (one JSON object per line).")
    security_protocol: str = setting("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str = setting("KAFKA_SASL_MECHANISM", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL protocol).")
    sasl_username: str = setting("KAFKA_SASL_USERNAME", "", "SASL user name.")
    sasl_password: str = setting("KAFKA_SASL_PASSWORD", "", "SASL password.")
    ssl_cafile: str = setting("KAFKA_SSL_CAFILE", "", "CA bundle that signs the brokers' certificates (SSL protocols).")
    ssl_certfile: str = setting("KAFKA_SSL_CERTFILE", "", "Client certificate for mutual TLS.")
    ssl_keyfile: str = setting("KAFKA_SSL_KEYFILE", "", "Client key for mutual TLS.")
    log_level: str = setting("KPIMARGIN_LOG_LEVEL", "warning", "Worker log level.")
    fault_injection: str = setting(
        "KPIMARGIN_FAULT_INJECTION", "", "Testing only: in_apply:N, after_outputs:N, mid_rows:N, after_rows:N or in_recovery makes the worker SIGKILL itself there (N: after N batches); the same names prefixed with freeze_ make it SIGSTOP itself there once; skip_resume_commit leaves the group's log offsets as they are on a rebalance and takes every log record from the log (no hand-off); stall_recovery takes the first changelog recovery with records to read for a stalled one (the group is asked to rebalance); stall_rebalance makes every rebalance hang where it would complete."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw, f.metadata["env"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.partitions < 1:
            raise ValueError("KPIMARGIN_PARTITIONS must be at least 1")
        if self.gc_young_objects < 0:
            raise ValueError("KPIMARGIN_GC_YOUNG_OBJECTS must be 0 (CPython's thresholds) or more")
        for name in ("batch_max", "router_batch_max", "persist_queue_max", "max_message_bytes", "stream_buffer_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_env(name)} must be at least 1")
        if self.log_record_max_bytes < 2 * self.max_message_bytes:
            raise ValueError("KPIMARGIN_LOG_RECORD_MAX_BYTES must be at least twice KPIMARGIN_MAX_MESSAGE_BYTES "
                             "(a log entry re-encodes one input message)")
        if not 1024 <= self.producer_batch_bytes <= 1_048_576:
            raise ValueError("KPIMARGIN_PRODUCER_BATCH_BYTES must be within 1024 and 1048576 (a broker's default message size limit)")
        if self.request_timeout_s <= 0 or self.stall_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("KPIMARGIN_REQUEST_TIMEOUT_S, KPIMARGIN_STALL_TIMEOUT_S and KPIMARGIN_CONNECT_TIMEOUT_S "
                             "must be positive")
        if self.agent_fetch_max_wait_ms < 0 or self.agent_fetch_min_bytes < 1 or self.fetch_max_wait_ms < 0:
            raise ValueError("KPIMARGIN_FETCH_MAX_WAIT_MS and KPIMARGIN_AGENT_FETCH_MAX_WAIT_MS must be 0 or more "
                             "milliseconds, KPIMARGIN_AGENT_FETCH_MIN_BYTES at least 1")
        if self.max_idle_ms < 0:
            raise ValueError("KPIMARGIN_MAX_IDLE_MS must be 0 or a number of milliseconds")
        if self.dedup_horizon_s < 0:
            raise ValueError("KPIMARGIN_DEDUP_HORIZON_S must be 0 (forever) or a number of seconds")
        if not self.store.startswith(("memory://", "rocksdb://")):
            raise ValueError(f"KPIMARGIN_STORE must be memory:// or rocksdb://, got {self.store!r}")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL not supported: {self.security_protocol!r}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                raise ValueError(f"KAFKA_SASL_MECHANISM must be PLAIN or SCRAM-SHA-256/512, got {self.sasl_mechanism!r}")
            if not self.sasl_username or not self.sasl_password:
                raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with a SASL protocol")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"KPIMARGIN_HTTP_PORT must be a port number (0: no HTTP server), got {self.http_port}")
        if self.http_port and not self.http_token and not is_loopback(self.http_bind):
            raise ValueError(f"KPIMARGIN_HTTP_BIND={self.http_bind} exposes the HTTP API beyond loopback: set "
                             "KPIMARGIN_HTTP_TOKEN (its /v1/ requests then need Authorization: Bearer <token>)")
        if self.http_advertised_url and not self.http_advertised_url.startswith(("http://", "https://")):
            raise ValueError(f"KPIMARGIN_HTTP_ADVERTISED_URL must be an http:// or https:// URL, got {self.http_advertised_url!r}")
        if self.ready_lag < 0:
            raise ValueError("KPIMARGIN_READY_LAG must be 0 or a number of records")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"KPIMARGIN_LOG_FORMAT must be text or json, got {self.log_format!r}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")

    def engine_config(self):
        """The engine knobs these settings choose (workers and replay must agree on them)."""
        from stream.core.state import EngineConfig

        horizon_us = self.dedup_horizon_s * 1_000_000 if self.dedup_horizon_s else None
        return EngineConfig(call_update_threshold=self.call_update_threshold, dedup_horizon_us=horizon_us)

    @property
    def http_url(self) -> str:
        """This worker's HTTP API as the other workers reach it."""
        if self.http_advertised_url:
            return self.http_advertised_url.rstrip("/")
        host = f"[{self.http_bind}]" if ":" in self.http_bind else self.http_bind
        return f"http://{host}:{self.http_port}"

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or "127.0.0.1:9092"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def env(self) -> dict[str, str]:
        """This settings object as environment variables (to start a worker subprocess)."""
        return {f.metadata["env"]: _render(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) rows, for the CLI help and ``docs/settings.md``."""
        return [(f.metadata["env"], _render(f.default), f.metadata["help"]) for f in fields(cls)]


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env(name: str) -> str:
    """The environment variable of a settings field."""
    return next(f.metadata["env"] for f in fields(Settings) if f.name == name)


def _convert(name: str, type_: Any, raw: str, env: str) -> Any:
    kind = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if kind == "Decimal":
            return Decimal(raw)
    except Exception:
        raise ValueError(f"{env}={raw!r} is not a valid {kind}") from None
    return raw


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
