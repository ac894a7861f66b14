"""The service's parts, started from one ServiceConfig: ingest (a worker in the config's group),
the session service (opt-in: host_tools/service/sessions_part.py), the time responder, the firmware chunk server (its own connection, in the config's chunks group),
the campaign runner (command, firmware update, key rotation and release key list campaigns), and the HTTP API on uvicorn (with the webhook dispatcher). `only` starts a subset, so
N of each run on N machines against one PostgreSQL (ingest in a shared group; the registry's
counter and the campaigns' conditional starts are safe across processes).

    svc = Service(load("edgepay.toml")).start()     # .url once the API listens
    ...
    svc.stop()
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

import uvicorn

from host_tools.cloud.accounts import Accounts
from host_tools.cloud.alerts import Alerts, Evaluator, Rules, Sources
from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.heartbeats import Heartbeats, Recorder
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.keylist_action import KeylistAction
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ota_action import OtaAction, OtaProgress
from host_tools.cloud.rekey import RekeyAction
from host_tools.cloud.presence import Presence, Tracker
from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout import CommandAction, Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.cloud.webhooks import Dispatcher, Webhooks
from host_tools.service.api import make_app
from host_tools.service.config import PARTS, ConfigError, ServiceConfig
from host_tools.service.sessions_part import SessionsPart

log = logging.getLogger("edgepay.serve")


class Service:
    def __init__(self, cfg: ServiceConfig, only: Iterable[str] | None = None):
        parts = set(only) if only else {p for p, on in cfg.parts.items() if on}
        bad = parts - set(PARTS)
        if bad:
            raise ConfigError(f"unknown part(s) {', '.join(sorted(bad))}: one of {', '.join(PARTS)}")
        self.cfg, self.parts = cfg, parts
        self.broker = BrokerSettings(cfg.broker_host, cfg.broker_port, cfg.user, cfg.password,
                                     ca_file=cfg.ca_file, engine=cfg.engine, servers=cfg.servers)
        self.token = cfg.token if "api" in parts else None
        self.registry: Registry | None = None
        self.accounts: Accounts | None = None
        self.webhooks: Webhooks | None = None
        self.heartbeats: Heartbeats | None = None
        self.presence: Presence | None = None
        self.alerts: Alerts | None = None
        self.client: CommandClient | None = None
        self.ingest: IngestWorker | None = None
        self.chunks: ChunkServer | None = None
        self.sessions: SessionsPart | None = None
        self._ledger = self._rollouts = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: uvicorn.Server | None = None
        self.url: str | None = None

    def start(self, timeout: float = 15.0) -> "Service":
        cfg = self.cfg
        self.registry = Registry(cfg.registry)
        if self.parts & {"api", "time", "campaigns"}:
            self.client = CommandClient(self.registry, self.broker).connect(timeout)
            if "time" in self.parts:
                self.client.serve_time()
        if "chunks" in self.parts:  # its own connection: chunk traffic never queues command results
            self.chunks = ChunkServer.connect(self.registry, self.broker, ReleaseStore(cfg.releases),
                                              share=cfg.chunks_group)
        if "sessions" in self.parts:  # before ingest, which hands it each commit when both run here
            self.sessions = SessionsPart(cfg, self.registry, self.broker).start(timeout)
        if "ingest" in self.parts:
            self._ledger = open_ledger(cfg.ledger)
            self.ingest = IngestWorker(self.registry, self._ledger, self.broker, group=cfg.ingest_group,
                                       on_commit=self.sessions.svc.on_commit if self.sessions else None).start(timeout)
        if self.sessions is not None:
            self.sessions.run(self._stop, settle=self.ingest is None)
        if "api" in self.parts and self._ledger is None:   # the finance export reads the ledger
            self._ledger = open_ledger(cfg.ledger)
        if self.parts & {"campaigns", "api"}:
            self._rollouts = RolloutStore.open(cfg.ledger)
        if "campaigns" in self.parts:
            assert self.client is not None and self._rollouts is not None
            ro = Rollouts(self._rollouts, {"command": CommandAction(self.client),
                                           "ota": OtaAction(self.client, OtaProgress(self._rollouts.db)),
                                           "rekey": RekeyAction(self.client),
                                           "keylist": KeylistAction(self.client)})
            t = threading.Thread(target=ro.run, args=(self._stop,), name="campaigns", daemon=True)
            t.start()
            self._threads.append(t)
        if "api" in self.parts:
            assert self.client is not None
            ingest = self.ingest
            # the accounts and the audit log live in the registry's database (its connection)
            self.accounts = Accounts(self.registry.db)
            # heartbeat history (verified, on the command connection) and its downsampling
            self.heartbeats = Heartbeats(self.registry.db)
            rec = Recorder(self.heartbeats, self.registry)
            self.client.mqtt.subscribe(Recorder.TOPIC, rec.on_message, qos=0)
            h = threading.Thread(target=rec.run, args=(self._stop,), name="heartbeats", daemon=True)
            h.start()
            self._threads.append(h)
            # the webhooks too; their dispatcher sends what any instance recorded
            self.webhooks = Webhooks(self.registry.db)
            d = threading.Thread(target=Dispatcher(self.webhooks).run, args=(self._stop,), name="webhooks", daemon=True)
            d.start()
            self._threads.append(d)
            # presence (verified status and hello, on the command connection) and the alert rules
            self.presence = Presence(self.registry.db)
            tr = Tracker(self.presence, self.registry)
            tr.subscribe(self.client.mqtt)
            self.alerts = Alerts(self.registry.db)
            runs: list = [tr.run]
            if cfg.alerts_on:
                src = Sources(self.registry.db, self._ledger, self._rollouts.db if self._rollouts else None)
                runs.append(Evaluator(self.alerts, src, Rules.from_config(cfg.alerts), self.webhooks).run)
            for fn, name in zip(runs, ("presence", "alerts")):
                t = threading.Thread(target=fn, args=(self._stop,), name=name, daemon=True)
                t.start()
                self._threads.append(t)
            app = make_app(self.registry, self.client, rollouts=self._rollouts, token=self.token,
                           accounts=self.accounts, ready=self.not_ready,
                           ingest_stats=(lambda: ingest.stats) if ingest else None,
                           metrics_public=cfg.metrics_public, cookie_secure=cfg.cookie_secure,
                           ledger=self._ledger, webhooks=self.webhooks, heartbeats=self.heartbeats,
                           presence=self.presence, alerts=self.alerts)
            self._server = uvicorn.Server(uvicorn.Config(app, host=cfg.http_host, port=cfg.http_port,
                                                         log_level="warning", lifespan="off"))
            t = threading.Thread(target=self._server.run, name="http", daemon=True)
            t.start()
            self._threads.append(t)
            deadline = time.monotonic() + timeout
            while not self._server.started:
                if not t.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server did not start on {cfg.http_host}:{cfg.http_port}")
                time.sleep(0.02)
            port = self._server.servers[0].sockets[0].getsockname()[1] if cfg.http_port == 0 else cfg.http_port
            self.url = f"http://{cfg.http_host}:{port}"
        log.info("edgepay serve: %s", ", ".join(sorted(self.parts)))
        return self

    def not_ready(self) -> list[str]:
        out = []
        if self.client is not None and not self.client.mqtt.client.is_connected():
            out.append("broker: the command connection is down")
        if self.ingest is not None and not self.ingest.connected():
            out.append("broker: the ingest connection is down")
        if self.chunks is not None and not self.chunks.mqtt.client.is_connected():
            out.append("broker: the chunk server's connection is down")
        if self.sessions is not None and not self.sessions.svc.cmd.mqtt.client.is_connected():
            out.append("broker: the session service's connection is down")
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        for t in self._threads:
            t.join(10)
        if self.ingest is not None:
            self.ingest.stop()
        if self.chunks is not None:
            self.chunks.close()
        if self.sessions is not None:
            self.sessions.stop()
        if self.client is not None:
            self.client.close()
        for x in (self._ledger, self._rollouts, self.registry):
            if x is not None:
                x.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
