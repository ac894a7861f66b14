"""What SessionService's two halves (session_auth.AuthFlows, session_settle.Settlement) share, in
one place: the state SessionService.__init__ sets up and the helpers each half calls on the other
or on the service. Both halves subclass ServiceCore, so this is their declared interface (pyright
checks every use against it); SessionService implements it. The method bodies here never run:
SessionService and AuthFlows come first in the method order."""
from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from host_tools.cloud.commands import CommandClient
from host_tools.cloud.payafter import Order, PayAfterProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_model import CloseRecord, SessionState
from host_tools.cloud.session_store import SessionStore


class ServiceCore:
    # collaborators and settings (SessionService.__init__)
    registry: Registry
    provider: PayAfterProvider
    store: SessionStore
    cmd: CommandClient
    clock: Callable[[], float]
    order_expires_s: int
    cmd_ttl: int
    doubt_s: float
    max_skew_s: int
    answer_ttl_s: float
    instance: str | None          # set: this instance receives every request and claims the ones it answers
    auth_expiry_s: float | None   # set: a request older than this (its own instant) is not answered
    on_settled: Callable[[dict], None] | None   # told once per settled session (settle_status + device, sid)
    # shared state: `_lock` guards every dict here; a session's own work runs under `_slock`
    _lock: threading.RLock
    _pool: ThreadPoolExecutor
    _pending: dict[tuple[str, str], CloseRecord]    # settlements to retry (kept in the store too)
    _answered: collections.OrderedDict[tuple[str, int], tuple[bytes, tuple[str, dict]]]
    _answer_cache: int
    sent: list[tuple[str, str, dict]]
    stats: collections.Counter
    refused: collections.Counter

    # ---- SessionService ----------------------------------------------------------------------
    def account(self, ident: str | None) -> str | None:
        raise NotImplementedError

    def tariff(self, device: str) -> dict | None:
        raise NotImplementedError

    def sessions(self) -> list[SessionState]:
        raise NotImplementedError

    def settle_status(self, device: str, sid: str) -> dict:
        raise NotImplementedError

    def _chain(self, device: str, key_version: int, seq: int) -> str:
        raise NotImplementedError

    def _board_seen(self, chain: str) -> None:
        raise NotImplementedError

    def _slock(self, device: str, sid: str) -> threading.Lock:
        raise NotImplementedError

    def _watch(self, device: str, kind: str, msg: dict, holder: str) -> None:
        raise NotImplementedError

    def _known(self, device: str, sid: str) -> SessionState | None:
        raise NotImplementedError

    def _state(self, device: str, sid: str, kind: str) -> SessionState:
        raise NotImplementedError

    def _save(self, s: SessionState) -> None:
        raise NotImplementedError

    def _flag(self, kind: str, s: SessionState, detail: str, **kw: Any) -> None:
        raise NotImplementedError

    def _limit(self, device: str, kind: str, tariff: dict) -> int:
        raise NotImplementedError

    def _fee(self, kind: str, tariff: dict | None, t0: int | None, t1: int | None, *,
             lost: bool = False, lines: list | None = None) -> tuple[int | None, list, str]:
        raise NotImplementedError

    # ---- AuthFlows, used by Settlement -------------------------------------------------------
    def _open_order(self, s: SessionState, account: str) -> Order:
        raise NotImplementedError

    def _own_order_no(self, s: SessionState, ref: str | None) -> str:
        raise NotImplementedError

    def _complete(self, s: SessionState, order: Order, amount: int, lines: list, t1: int | None,
                  dev_amount: int | None, cloud: int | None,
                  end_device: str | None = None) -> Order | None:
        raise NotImplementedError
