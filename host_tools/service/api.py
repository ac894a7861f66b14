"""The HTTP API: devices and their commands, campaigns, health and metrics.

    GET  /healthz                          the process is alive
    GET  /readyz                           200 when the broker connection is up and the databases
                                           answer, else 503 with the reasons
    GET  /metrics                          Prometheus text
    GET  /v1/devices?status=&kind=&board=  the registry's devices
    GET  /v1/devices/{id}
    POST /v1/devices/{id}/commands         {"name", "args": {"text": "hi"}, "ttl", "timeout"}: signs
                                           and sends, waits for the signed result; the outcome
    GET  /v1/campaigns, /v1/campaigns/{id}
With a token configured, every /v1 call needs `Authorization: Bearer <token>` (401 otherwise).
Errors are JSON {"detail": ...}: 404 unknown device or campaign, 409 a revoked device, 422 an
unknown command or a bad argument (nothing is signed or sent), 503 the broker is down.
"""
from __future__ import annotations

import hmac
import time
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from host_tools.cloud import cmdspec
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.registry import Registry, RegistryError
from host_tools.cloud.rollout_store import RolloutStore


class CommandIn(BaseModel):
    name: str = Field(min_length=1, max_length=24)
    args: dict[str, Any] | None = None
    ttl: int = Field(default=60, ge=1, le=86400)
    timeout: float = Field(default=10.0, gt=0, le=120)


class CommandOut(BaseModel):
    device: str
    name: str
    state: str
    code: str | None
    data: Any = None
    cti: str
    seq: int
    elapsed_ms: float


class Device(BaseModel):
    id: str
    kind: str
    board: str
    status: str
    key_version: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter("edgepay_commands", "commands sent through the API, by outcome",
                                ["state"], registry=self.registry)
        self.latency = Histogram("edgepay_command_seconds", "command round trip (sign, send, signed result)",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.devices = Gauge("edgepay_devices", "registered devices by status", ["status"], registry=self.registry)
        self.ingest_committed = Gauge("edgepay_ingest_committed", "records committed by this process's ingest",
                                      registry=self.registry)
        self.ingest_quarantined = Gauge("edgepay_ingest_quarantined", "records quarantined by this process's ingest",
                                        registry=self.registry)
        self.up = Gauge("edgepay_broker_up", "1 while the broker connection is up", registry=self.registry)


def make_app(registry: Registry, client: CommandClient, *, rollouts: RolloutStore | None = None,
             token: str | None = None, ready: Callable[[], list[str]] = lambda: [],
             ingest_stats: Callable[[], dict] | None = None, metrics: Metrics | None = None) -> FastAPI:
    """The app over the service's parts. `ready()` lists what is not ready (empty: ready)."""
    m = metrics or Metrics()
    app = FastAPI(title="edgepay", version="1", description=(__doc__ or "").split("\n")[0])

    def auth(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    def readyz():
        missing = ready()
        try:
            registry.devices()
        except Exception as e:  # noqa: BLE001 - any database trouble is "not ready"
            missing.append(f"registry: {e}")
        if missing:
            return JSONResponse({"ready": False, "not_ready": missing}, status_code=503)
        return {"ready": True}

    @app.get("/metrics")
    def metrics_() -> PlainTextResponse:
        counts: dict[str, int] = {}
        for d in registry.devices():
            counts[d.status] = counts.get(d.status, 0) + 1
        for s in ("active", "revoked", "decommissioned"):
            m.devices.labels(s).set(counts.get(s, 0))
        if ingest_stats is not None:
            st = ingest_stats()
            m.ingest_committed.set(st.get("committed", 0))
            m.ingest_quarantined.set(st.get("quarantined", 0))
        m.up.set(0 if any("broker" in r for r in ready()) else 1)
        return PlainTextResponse(generate_latest(m.registry).decode(), media_type="text/plain; version=0.0.4")

    v1 = [Depends(auth)]

    def _device(d) -> Device:
        return Device(id=d.device_id, kind=d.kind, board=d.board, status=d.status, key_version=d.key_version)

    @app.get("/v1/devices", dependencies=v1)
    def devices(status: str | None = None, kind: str | None = None, board: str | None = None) -> list[Device]:
        return [_device(d) for d in registry.devices()
                if (status is None or d.status == status) and (kind is None or d.kind == kind)
                and (board is None or d.board == board)]

    @app.get("/v1/devices/{device_id}", dependencies=v1)
    def device(device_id: str) -> Device:
        try:
            return _device(registry.get(device_id))
        except RegistryError as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/v1/devices/{device_id}/commands", dependencies=v1)
    async def command(device_id: str, body: CommandIn) -> CommandOut:
        try:
            d = registry.get(device_id)
        except RegistryError as e:
            raise HTTPException(404, str(e)) from None
        if not d.active:
            raise HTTPException(409, f"device {device_id!r} is {d.status}: it is sent nothing")
        try:
            args = cmdspec.check(body.name, {_key(k): v for k, v in (body.args or {}).items()} or None)
        except cmdspec.ArgProblem as e:
            raise HTTPException(422, str(e)) from None
        down = ready()
        if down:
            raise HTTPException(503, "not ready: " + "; ".join(down))
        t0 = time.monotonic()
        c = await client.asend(device_id, body.name, args, timeout=body.timeout, ttl=body.ttl)
        dt = time.monotonic() - t0
        m.commands.labels(c.state.value).inc()
        m.latency.observe(dt)
        return CommandOut(device=device_id, name=body.name, state=c.state.value, code=c.code, data=_plain(c.data),
                          cti=c.cti.hex(), seq=c.seq, elapsed_ms=round(dt * 1000, 1))

    @app.get("/v1/campaigns", dependencies=v1)
    def campaigns() -> list[dict]:
        return [_campaign(c) for c in rollouts.campaigns()] if rollouts is not None else []

    @app.get("/v1/campaigns/{cid}", dependencies=v1)
    def campaign(cid: str) -> dict:
        c = rollouts.campaign(cid) if rollouts is not None else None
        if c is None:
            raise HTTPException(404, f"no campaign {cid!r}")
        assert rollouts is not None
        return {**_campaign(c), "targets": [{"device": t.device, "state": t.state, "reason": t.reason}
                                            for t in rollouts.targets(cid)]}
    return app


def _key(k: str) -> int | str:
    return int(k) if k.isdigit() else k   # "1": the wire key; "text": its name (cmdspec maps it)


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _campaign(c) -> dict:
    return {"id": c.id, "action": c.action, "state": c.state, "reason": c.reason, "cohorts": c.cohorts,
            "rate_per_min": c.rate, "counts": c.counts}
