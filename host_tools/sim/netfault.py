"""A TCP proxy between simulated boards and the broker that fails the way networks do: drop every
connection now, refuse new ones for a while (a partition), or drop connections at random.
Loopback only; it stops by itself with close()."""
from __future__ import annotations

import random
import selectors
import socket
import threading
import time


class FaultyProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", seed: int | None = None):
        self.target = (target_host, target_port)
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.rng = random.Random(seed)
        self.drop_rate = 0.0           # chance per second that a given connection is cut
        self._down_until = 0.0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._born: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = False
        self.stats = {"accepted": 0, "refused": 0, "dropped": 0}
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    # -- faults
    def drop_all(self) -> None:
        with self._lock:
            socks = list(self._pairs)
        for s in socks:
            self._close(s)
            self.stats["dropped"] += 1

    def partition(self, seconds: float) -> None:
        """Cut everything and refuse new connections for `seconds`."""
        self._down_until = time.monotonic() + seconds
        self.drop_all()

    def heal(self) -> None:
        """End a partition now: new connections are accepted again."""
        self._down_until = 0.0

    # -- plumbing
    def _close(self, s: socket.socket) -> None:
        with self._lock:
            peer = self._pairs.pop(s, None)
            if peer is not None:
                self._pairs.pop(peer, None)
            self._born.pop(s, None)
            if peer is not None:
                self._born.pop(peer, None)
        for x in (s, peer):
            if x is None:
                continue
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.close()
            except OSError:
                pass

    def _loop(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.srv.setblocking(False)
        self.sel.register(self.srv, selectors.EVENT_READ)
        last_chaos = time.monotonic()
        while not self._stop:
            for key, _ in self.sel.select(0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)  # only sockets are registered
                if s is self.srv:
                    self._accept()
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                with self._lock:
                    peer = self._pairs.get(s)
                if not data or peer is None:
                    self._close(s)
                    continue
                try:
                    self._forward(s, peer, data)
                except OSError:
                    self._close(s)
            now = time.monotonic()
            if self.drop_rate and now - last_chaos >= 0.1:
                p = self.drop_rate * (now - last_chaos)
                last_chaos = now
                with self._lock:
                    clients = [c for c in self._born]
                for c in clients:
                    if self.rng.random() < p:
                        self._close(c)
                        self.stats["dropped"] += 1

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> None:
        """Pass bytes on (a subclass that plays an attacker on the path rewrites them here)."""
        dst.sendall(data)

    def _accept(self) -> None:
        try:
            c, _ = self.srv.accept()
        except OSError:
            return
        if time.monotonic() < self._down_until:
            c.close()
            self.stats["refused"] += 1
            return
        try:
            u = socket.create_connection(self.target, timeout=2)
        except OSError:
            c.close()
            self.stats["refused"] += 1
            return
        for x in (c, u):
            x.settimeout(5)  # recv only when readable; sendall may wait for a slow peer
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs[c] = u
            self._pairs[u] = c
            self._born[c] = time.monotonic()
        self.sel.register(c, selectors.EVENT_READ)
        self.sel.register(u, selectors.EVENT_READ)
        self.stats["accepted"] += 1

    def close(self) -> None:
        self._stop = True
        self._t.join(timeout=2)
        self.drop_all()
        self.srv.close()
