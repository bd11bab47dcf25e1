"""The worker's HTTP API (``KPIMARGIN_HTTP_PORT``; off by default), on the worker's own
event loop (aiohttp), described with examples in ``docs/operations.md``:

* ``GET /healthz`` -- 200 while the loop and the router, log agent and persister tasks are
  alive, 503 otherwise;
* ``GET /readyz`` -- 200 once the worker owns its log partitions, has loaded their state
  and every owned log partition and input partition is within ``KPIMARGIN_READY_LAG``
  records of its end; 503 with a JSON reason before that and during a rebalance;
* ``GET /metrics`` -- Prometheus text format (:mod:`stream.worker.metrics`);
* ``GET /v1/accounts/{id}`` -- the account's requirement from the live state, with the log
  offset it reflects (:func:`stream.core.pretrade.account_view`);
* ``POST /v1/accounts/{id}/whatif`` -- IM, equity and excess before and after hypothetical
  fills, changing nothing (:func:`stream.core.pretrade.whatif`).

An account another worker owns is answered with a 307 to the same path on that worker's
``KPIMARGIN_HTTP_ADVERTISED_URL`` (faust passes each member's URL to the others with the
assignment); 503 while a rebalance leaves its partition without an owner. ``/v1/`` asks for
``Authorization: Bearer <KPIMARGIN_HTTP_TOKEN>`` when a token is set (the settings refuse a
bind beyond loopback without one). No table browsing; an error never shows a stack.

The handlers read the live state between two log records (the loop runs one thing at a
time, and the engine applies a record without yielding), so every answer is the state
after some log record -- the one ``log_offset`` names.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from typing import Any

import orjson
from aiohttp import web
from aiokafka import TopicPartition

from stream.core import pretrade
from stream.core.errors import Rejected
from stream.log.ordered_log import log_partition
from stream.settings import Settings
from stream.worker.metrics import registry, render

log = logging.getLogger("kpimargin")


class WorkerView:
    """What the HTTP API and the metrics read of a running worker."""

    def __init__(self, app, settings: Settings, agent, router):
        self.app, self.settings, self.agent, self.router = app, settings, agent, router
        self.tasks: dict[str, asyncio.Task] = {}
        self.started = time.monotonic()

    def watch(self, name: str) -> None:
        """The calling task is one the worker's health depends on."""
        task = asyncio.current_task()
        if task is not None:
            self.tasks[name] = task

    # ---------------------------------------------------------------- health and readiness
    def health(self) -> tuple[bool, dict]:
        dead = sorted(name for name, task in self.tasks.items() if task.done())
        if dead:
            return False, {"status": "failed", "reason": "task_ended", "tasks": dead}
        if self.agent.stopping:
            return False, {"status": "stopping", "reason": "stopping"}
        return True, {"status": "ok", "tasks": sorted(self.tasks), "uptime_s": round(time.monotonic() - self.started, 1)}

    def readiness(self) -> tuple[bool, dict]:
        agent, router, limit = self.agent, self.router, self.settings.ready_lag
        if agent.stopping:
            return False, {"status": "not_ready", "reason": "stopping"}
        if agent.assigned is None or agent.rebalancing:
            reason = "starting" if agent.generation == 0 else "rebalancing"
            return False, {"status": "not_ready", "reason": reason, "detail": "the group is assigning the log "
                           "partitions, or their state is loading"}
        owned = sorted(agent.assigned)
        if router.dirty or set(router.tasks) != set(owned):
            return False, {"status": "not_ready", "reason": "router_starting", "partitions": owned}
        engine, router_lag = self.engine_lag(), self.router_lag()
        unknown = [p for p in owned if p not in engine]
        if unknown:
            return False, {"status": "not_ready", "reason": "log_end_unknown", "partitions": unknown}
        behind = {str(p): lag for p, lag in engine.items() if lag > limit}
        if behind:
            return False, {"status": "not_ready", "reason": "engine_lag", "ready_lag": limit, "lag": behind}
        inputs = {f"{t}/{q}": lag for (t, q), lag in router_lag.items() if lag > limit}
        if inputs or len(router_lag) < len(self._input_partitions()):
            return False, {"status": "not_ready", "reason": "router_lag", "ready_lag": limit, "lag": inputs}
        return True, {"status": "ready", "partitions": owned,
                      "engine_lag": {str(p): lag for p, lag in sorted(engine.items())},
                      "router_lag_max": max(router_lag.values(), default=0)}

    def engine_lag(self) -> dict[int, int]:
        """Per owned log partition with a known end: records not yet applied."""
        consumer = self.app.consumer
        out = {}
        for p, part in list(self.agent.parts.items()):
            try:
                end = consumer.highwater(TopicPartition(self.agent.log_name, p))
            except Exception:  # not assigned (any more)
                continue
            if end is not None:
                out[p] = max(0, end - part.next_offset)
        return out

    def _input_partitions(self) -> set:
        return {tp for task in self.router.tasks.values() for tp in task.buffers}

    def router_lag(self) -> dict[tuple[str, int], int]:
        """Per input partition the router reads and whose end is known: records not yet routed."""
        router = self.router
        consumer = router.consumer
        forwarded: dict[Any, int] = {}
        for task in list(router.tasks.values()):
            for tp, offset in task.forwarded.items():
                forwarded[tp] = min(offset, forwarded.get(tp, offset))
        out = {}
        for tp, offset in forwarded.items():
            known = [router.ends[tp].offset] if tp in router.ends else []
            if consumer is not None:
                try:
                    high = consumer.highwater(tp)
                except Exception:
                    high = None
                if high is not None:
                    known.append(high)
            if known:
                out[router.logical(tp)] = max(0, max(known) - offset)
        return out

    def partition_sizes(self) -> dict[int, dict]:
        sizes = {}
        for p, part in list(self.agent.parts.items()):
            state = part.state
            accounts = state.accounts.values()
            sizes[p] = {"rows": 1 + len(state.contracts) + len(state.accounts) + sum(len(a.seen) for a in accounts),
                        "accounts": len(state.accounts), "positions": sum(len(a.positions) for a in accounts),
                        "contracts": len(state.contracts), "clock_us": state.now_us}
        return sizes

    # ---------------------------------------------------------------- accounts
    def owner_url(self, p: int) -> str | None:
        """The advertised URL of the member the group's last assignment gave log partition ``p``."""
        try:
            distribution = self.app.assignor.external_topics_metadata()
        except Exception:
            return None
        for url, topics in distribution.items():
            if p in topics.get(self.agent.log_name, ()):
                return url.rstrip("/")
        return None

    def locate(self, account_id: str) -> tuple[int, Any, str | None]:
        """``(log partition, its live Partition or None, where to redirect or None)``; raises
        :class:`Unavailable` while no worker can answer for it."""
        p = log_partition(account_id, self.settings.partitions)
        agent = self.agent
        if agent.assigned is None or agent.rebalancing:
            raise Unavailable("rebalancing", f"log partition {p} is being reassigned")
        if p in agent.assigned:
            part = agent.parts.get(p)
            if part is None:
                raise Unavailable("loading", f"log partition {p} is loading")
            return p, part, None
        url = self.owner_url(p)
        if url is None or url == self.settings.http_url:
            raise Unavailable("no_owner", f"no worker owns log partition {p} now")
        return p, None, url


class Unavailable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _json(body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _error(status: int, reason: str, detail: str, field: str | None = None) -> web.Response:
    body: dict = {"reason": reason, "detail": detail}
    if field is not None:
        body["field"] = field
    return _json(body, status)


def build_app(view: WorkerView, settings: Settings, stats) -> web.Application:
    token = settings.http_token.encode()
    metrics_registry = registry(stats, view)

    @web.middleware
    async def guard(request: web.Request, handler):
        try:
            if request.path.startswith("/v1/") and token:
                given = request.headers.get("Authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                    return web.Response(body=orjson.dumps({"reason": "unauthorized", "detail": "Authorization: "
                                                           "Bearer <KPIMARGIN_HTTP_TOKEN> required"}),
                                        status=401, content_type="application/json",
                                        headers={"WWW-Authenticate": 'Bearer realm="kpimargin"'})
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # a bug: logged here, never shown to the caller
            log.exception("HTTP %s %s failed", request.method, request.path)
            return _error(500, "internal_error", "the request failed; the worker's log has the details")

    async def healthz(request: web.Request) -> web.Response:
        ok, body = view.health()
        return _json(body, 200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ok, body = view.readiness()
        return _json(body, 200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(metrics_registry), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    def _located(request: web.Request):
        account_id = request.match_info["account_id"]
        try:
            p, part, url = view.locate(account_id)
        except Unavailable as exc:
            return None, _json({"reason": exc.reason, "detail": exc.detail}, 503, {"Retry-After": "1"})
        if url is not None:
            raise web.HTTPTemporaryRedirect(url + request.path_qs)
        return (account_id, p, part), None

    async def account(request: web.Request) -> web.Response:
        found, answer = _located(request)
        if answer is not None:
            return answer
        account_id, p, part = found
        view_ = pretrade.account_view(part.state, account_id)
        if view_ is None:
            return _error(404, "unknown_account", f"log partition {p} holds no account {account_id!r}")
        return _json({**view_, "log_partition": p, "log_offset": part.next_offset - 1})

    async def whatif(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, "undecodable", f"the body is not JSON: {exc}")
        if not isinstance(body, dict) or "fills" not in body:
            return _error(400, "schema_violation", 'expected {"fills": [...]}', "fills")
        unknown = sorted(set(body) - {"fills"})
        if unknown:
            return _error(400, "schema_violation", "unknown field", unknown[0][:64])
        found, answer = _located(request)
        if answer is not None:
            return answer
        account_id, p, part = found
        try:
            result = pretrade.whatif(part.state, account_id, body["fills"])
        except Rejected as exc:
            return _error(400, exc.reason, exc.detail, exc.field)
        return _json({**result, "log_partition": p, "log_offset": part.next_offset - 1})

    app = web.Application(middlewares=[guard], client_max_size=1 << 20)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/accounts/{account_id}", account)
    app.router.add_post("/v1/accounts/{account_id}/whatif", whatif)
    return app


class PortTaken(Exception):
    """The HTTP API's address is in use or cannot be bound (the message is one line)."""


def bind(settings: Settings) -> socket.socket:
    """The HTTP API's listening socket, bound before the worker starts (so that a port in
    use is one line and status 2, not a failure inside faust)."""
    family = socket.AF_INET6 if ":" in settings.http_bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.http_bind, settings.http_port))
    except OSError as exc:
        sock.close()
        raise PortTaken(f"the HTTP API cannot listen on {settings.http_bind}:{settings.http_port} "
                        f"(KPIMARGIN_HTTP_BIND, KPIMARGIN_HTTP_PORT): {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(view: WorkerView, settings: Settings, stats, sock: socket.socket) -> None:
    """Serve the API on ``sock`` until cancelled."""
    runner = web.AppRunner(build_app(view, settings, stats), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("HTTP API on %s (advertised as %s)", f"{settings.http_bind}:{settings.http_port}", settings.http_url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
