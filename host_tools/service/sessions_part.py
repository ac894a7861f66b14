"""The `sessions` part of `edgepay serve`: the session service (host_tools/cloud/sessions.py) as a
durable instance. It answers devices' auth_req through the configured payment provider and settles
closed sessions. Each instance has a stable name ([sessions] instance, or the host name): a
persistent broker session keeps its requests while it is down, and a claim in the store picks the
one instance that answers each request. Its state lives in the ledger's database.

    [parts]    sessions = true
    [sessions] provider = "mypay.adapter:provider"   # a callable returning a PayAfterProvider
               instance = "sessions-a"               # stable across restarts; unique per instance
               auth_expiry_s = 60                    # a request older than this is not answered
               settle_s = 10                         # without ingest here: settle from the ledger
               claim_lease_s = 30                    # take over a claim left unanswered this long

With ingest in the same process, ingest hands each commit to the service (`on_commit`). Otherwise
the service settles from the ledger every settle_s. Either way it sweeps the provider's orders
every settle_s, and it takes what the ledger committed while it was down when it starts (`recover`).
Each settled session is a `session.settled` webhook (its settle status, amounts in minor units).
`provider = "scripted"` is the test double (host_tools/cloud/payafter.py): no money moves.
"""
from __future__ import annotations

import importlib
import logging
import threading

from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.payafter import PayAfterProvider, ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.sessions import SessionService
from host_tools.cloud.webhooks import Webhooks
from host_tools.service.config import ConfigError, ServiceConfig

log = logging.getLogger("edgepay.serve.sessions")


def load_provider(spec: str | None) -> PayAfterProvider:
    """`module:factory` -> factory(), which must be a PayAfterProvider; "scripted" -> the double."""
    if not spec:
        raise ConfigError('the sessions part needs a payment provider: [sessions] provider = "module:factory" '
                          '(or EDGEPAY_PROVIDER; "scripted" for the test double)')
    if spec == "scripted":
        log.warning("sessions: provider 'scripted' is the test double: no money moves")
        return ScriptedProvider()
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"[sessions] provider {spec!r}: give module:factory")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"[sessions] provider {spec!r}: {e}") from None
    p = factory()
    if not isinstance(p, PayAfterProvider):
        raise ConfigError(f"[sessions] provider {spec!r} returned {type(p).__name__}, not a PayAfterProvider")
    return p


class SessionsPart:
    def __init__(self, cfg: ServiceConfig, registry: Registry, broker: BrokerSettings):
        self.cfg = cfg
        self.provider = load_provider(cfg.provider)
        self.store = SessionStore.open(cfg.ledger)
        # session.settled webhooks: recorded here, sent by the api part's dispatcher (any instance)
        self.webhooks = Webhooks(registry.db)
        self.svc = SessionService(registry, self.provider, broker, store=self.store, instance=cfg.instance,
                                  auth_expiry_s=cfg.auth_expiry_s, claim_lease_s=cfg.claim_lease_s,
                                  on_settled=self._settled)
        self._ledger = None
        self._thread: threading.Thread | None = None

    def _settled(self, st: dict) -> None:
        self.webhooks.emit("session.settled", st)

    def start(self, timeout: float) -> "SessionsPart":
        self.svc.start(timeout)
        return self

    def run(self, stop: threading.Event, settle: bool) -> None:
        """Catch up with the ledger, then settle (when no ingest runs here) and sweep every settle_s."""
        self._ledger = open_ledger(self.cfg.ledger)
        out = self.svc.recover(self._ledger)
        log.info("sessions %s: recovered %s", self.cfg.instance, out)

        def loop() -> None:
            while not stop.wait(self.cfg.settle_s):
                try:
                    if settle:
                        assert self._ledger is not None
                        self.svc.settle_ledger(self._ledger)
                    self.svc.sweep()
                except Exception:  # noqa: BLE001 - the next round tries again; the state is in the store
                    log.exception("sessions: settle/sweep failed")
        self._thread = threading.Thread(target=loop, name="sessions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(10)
        self.svc.stop()
        self.store.close()
        if self._ledger is not None:
            self._ledger.close()
