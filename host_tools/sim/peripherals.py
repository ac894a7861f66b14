"""The host side of a simulated board's peripherals: a TCP server on loopback that the firmware's
sim HAL (firmware/hal/sim.py) connects to. One per board; put its port in the board's config
(`provision_sim(..., peripherals=sp)` does: cfg["sim"] = {"host": "127.0.0.1", "port": sp.port}).

Wire format, one JSON object per line (UTF-8, "\\n"-terminated):
  device -> host  {"t": "hello", "board": "sim-gate", "out": {"entry_barrier": "closed", ...}}
                        on every (re)connect, with the state of every output;
                  {"t": "out", "n": "entry_barrier", "v": "open"}
                        on each actuation (barrier/relay "open"|"closed", lock "locked"|"unlocked",
                        indicator "on"|"off", display: the text)
  host -> device  {"t": "in", "n": "entry_loop", "v": 1}         digital input, 0|1
                  {"t": "scan", "n": "qr", "v": "PAY-42"}         scan: plate, QR or RFID tag
                  {"t": "scale", "n": "scale", "v": 1250}         scale reading, integer grams
Inputs the host has set are replayed whenever a device (re)connects, as a wire harness would
still hold them. Slot group members are named "<group>.<index>" ("locks.3", "slots.3").

    sp = SimPeripherals()
    sp.set_input("entry_loop", 1); sp.scan("entry_camera", "AB123CD")
    sp.wait_output("entry_barrier", "open", timeout=5)
    sp.close()
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any


class SimPeripherals:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind((host, port))
        self._srv.listen(2)
        self.port: int = self._srv.getsockname()[1]
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._outputs: dict[str, Any] = {}
        self._inputs: dict[str, int] = {}
        self.events: list[tuple[float, str, dict]] = []  # (monotonic time, "rx" | "tx", message)
        self.hellos = 0
        self.board: str | None = None
        self.bad_lines = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name=f"simperiph-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)

    # ---- observation ------------------------------------------------------------------------
    @property
    def outputs(self) -> dict[str, Any]:
        """Last value of every output the device reported (a copy)."""
        with self._cond:
            return dict(self._outputs)

    def output(self, name: str, default: Any = None) -> Any:
        with self._cond:
            return self._outputs.get(name, default)

    def display(self, name: str = "display") -> str | None:
        """The text on the device's display."""
        return self.output(name)

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._conn is not None and self.hellos > 0

    def history(self, name: str | None = None) -> list[dict]:
        """Messages (both directions) in order, optionally only those naming `name`."""
        with self._cond:
            return [m for _, _, m in self.events if name is None or m.get("n") == name]

    def wait_output(self, name: str, value: Any, timeout: float = 5.0) -> None:
        """Wait until output `name` holds `value` (a callable value is a predicate)."""
        pred = value if callable(value) else (lambda v: v == value)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (name in self._outputs and pred(self._outputs[name])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"output {name!r} never became {value!r} in {timeout}s; "
                                       f"it is {self._outputs.get(name, '<unreported>')!r}")
                self._cond.wait(left)

    def wait_connected(self, timeout: float = 10.0, after: int = 0) -> None:
        """Wait for the device's hello number `after + 1` (or later)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.hellos <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no device connected in {timeout}s")
                self._cond.wait(left)

    # ---- stimuli ----------------------------------------------------------------------------
    def set_input(self, name: str, value: int | bool) -> None:
        """Set a digital input; kept and replayed if the device reconnects."""
        v = 1 if value else 0
        with self._cond:
            self._inputs[name] = v
        self._send({"t": "in", "n": name, "v": v}, wait=False)

    def scan(self, name: str, value: str, timeout: float = 5.0) -> None:
        """A scan on scanner `name` (plate camera, QR scanner); waits for a connected device."""
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            raise ValueError("a scan is a string of 1..64 characters")
        self._send({"t": "scan", "n": name, "v": value}, timeout=timeout)

    def tag(self, name: str, value: str, timeout: float = 5.0) -> None:
        """An RFID tag presented to reader `name` (same wire message as a scan)."""
        self.scan(name, value, timeout)

    def set_scale(self, name: str, grams: int, timeout: float = 5.0) -> None:
        if isinstance(grams, bool) or not isinstance(grams, int):
            raise ValueError("grams must be an integer")
        self._send({"t": "scale", "n": name, "v": grams}, timeout=timeout)

    def send_raw(self, line: bytes, timeout: float = 5.0) -> None:
        """Bytes as they are (tests of the device's handling of bad input)."""
        self._wait_conn(timeout)
        with self._send_lock:
            assert self._conn is not None
            self._conn.sendall(line)

    # ---- plumbing ---------------------------------------------------------------------------
    def _wait_conn(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._conn is None or self.hellos == 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise ConnectionError(f"no device connected to the peripherals on port {self.port}")
                self._cond.wait(left)

    def _send(self, m: dict, wait: bool = True, timeout: float = 5.0) -> bool:
        if wait:
            self._wait_conn(timeout)
        data = (json.dumps(m, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return False
            try:
                conn.sendall(data)
            except OSError:
                return False
        with self._cond:
            self.events.append((time.monotonic(), "tx", m))
        return True

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._send_lock, self._cond:
                old, self._conn = self._conn, conn  # a rebooted device replaces its old connection
            if old is not None:
                _close(old)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            for raw in f:
                try:
                    m = json.loads(raw)
                    t = m["t"]
                except (ValueError, KeyError, TypeError):
                    with self._cond:
                        self.bad_lines += 1
                    continue
                with self._cond:
                    self.events.append((time.monotonic(), "rx", m))
                    if t == "out":
                        self._outputs[m["n"]] = m["v"]
                    elif t == "hello":
                        self.board = m.get("board")
                        self._outputs.update(m.get("out") or {})
                        replay = dict(self._inputs)
                    self._cond.notify_all()
                if t == "hello":
                    for n, v in replay.items():  # the harness still holds these inputs
                        self._send({"t": "in", "n": n, "v": v}, wait=False)
                    with self._cond:
                        self.hellos += 1
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._send_lock, self._cond:
                if self._conn is conn:
                    self._conn = None
                self._cond.notify_all()
            f.close()
            _close(conn)

    def close(self) -> None:
        """Stop serving: the device sees its connection drop (and keeps retrying)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            self._srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._srv.close()
        with self._send_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            _close(conn)
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> SimPeripherals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
