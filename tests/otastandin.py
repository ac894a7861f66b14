"""Stand-ins for the cloud side of firmware updates (tests/test_chunkserver.py, tests/test_ota_action.py):
a release written as `edgepay release build` writes it, and a stand-in device in Python built on
the host codec (paho-mqtt as its link): it answers signed commands, publishes signed `ota` events
and pulls chunks."""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.protocol import ERROR_CODES, open_message, seal
from host_tools.protocol.manifest import Manifest, sign_manifest


def write_release(root: Path, payload: bytes, *, board: str = "sim-gate", kind: str = "gate",
                  version: str = "1.4.0", seq: int = 7, chunk: int = 1024,
                  key: Ed25519PrivateKey | None = None) -> tuple[Path, Manifest, bytes]:
    """ROOT/BOARD-VERSION.bin and .manifest, as `edgepay release build` writes them; (stem, manifest, signed)."""
    key = key or Ed25519PrivateKey.generate()
    m = Manifest(board=board, kind=kind, version=version, seq=seq, size=len(payload),
                 sha256=hashlib.sha256(payload).digest(), chunk=chunk)
    signed = sign_manifest(key, m)
    root.mkdir(parents=True, exist_ok=True)
    stem = root / f"{board}-{version}"
    Path(f"{stem}.bin").write_bytes(payload)
    Path(f"{stem}.manifest").write_bytes(signed)
    return stem, m, signed


Script = Callable[[dict], "tuple[str, dict | None] | None"]   # a command -> (result code, data) or no answer


class StandIn:
    """A device in Python: user `user` (default: the device id, on the device listener) or any
    cloud user on the cloud listener. Commands are verified with the device's key and answered by
    `script`; everything it received is kept in order."""

    def __init__(self, port: int, device: str, key: bytes, *, user: str | None = None, password: str = "",
                 script: Script | None = None, key_version: int = 1):
        self.device, self.key = device, key
        self.kid = f"{device}:{key_version}".encode()
        self.script = script or (lambda cmd: ("ok", {"st": "downloading"}))
        self.seq = 0
        self.commands: list[dict] = []
        self.chunks: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-{os.urandom(3).hex()}"
                             if user else device)
        self.c.username_pw_set(user or device, password)
        ready = threading.Event()
        self.c.on_connect = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert ready.wait(5), "the stand-in did not connect"
        subs = [(f"v1/dev/{device}/dn/cmd", 1), (f"v1/dev/{device}/dn/ota", 0)]
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(subs)
        assert done.wait(5)

    def next_seq(self) -> int:
        with self._lock:
            self.seq += 1
            return self.seq

    def publish(self, suffix: str, msg: dict, qos: int = 1, key: bytes | None = None, kid: bytes | None = None,
                wait: bool = True) -> None:
        t = f"v1/dev/{self.device}/{suffix}"
        info = self.c.publish(t, seal(key or self.key, kid or self.kid, t, msg), qos=qos)
        if wait:
            info.wait_for_publish(5)

    def _on_message(self, c, u, m) -> None:
        if m.topic.endswith("/dn/ota"):
            self.chunks.put(bytes(m.payload))
            return
        try:
            cmd = open_message(self.key, self.kid, m.topic, bytes(m.payload))
        except Exception:  # noqa: BLE001 - a stand-in ignores what does not verify
            return
        self.commands.append(cmd)
        answer = self.script(cmd)
        if answer is None:
            return
        code, data = answer
        res = {"type": "cmd_result", "seq": self.next_seq(), "cti": cmd["cti"], "cseq": cmd["seq"],
               "status": ERROR_CODES[code], "name": cmd["name"]}
        if data:
            res["data"] = data
        self.publish("up/res", res, wait=False)

    def names(self) -> list[str]:
        return [c["name"] for c in self.commands]

    def wait_command(self, name: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.commands:
                if c["name"] == name:
                    return c
            time.sleep(0.02)
        raise AssertionError(f"{self.device} never got {name}: {self.names()}")

    def event(self, st: str, version: str, seq: int, **extra) -> None:
        """A signed `ota` event (SPEC §10): detail {"st", "v", "seq", ...}."""
        self.publish("up/evt", {"type": "event", "seq": self.next_seq(), "code": "ota",
                                "detail": {"st": st, "v": version, "seq": seq, **extra}})

    # ---- pulling a release -----------------------------------------------------------------------
    def request(self, rel: bytes, i: int, *, key: bytes | None = None, kid: bytes | None = None,
                wait: bool = True) -> None:
        self.publish("up/ota", {"type": "chunk_req", "seq": self.next_seq(), "rel": rel, "i": i},
                     qos=0, key=key, kid=kid, wait=wait)

    def chunk(self, timeout: float = 5.0) -> dict:
        """The next chunk received, verified under the device's key."""
        raw = self.chunks.get(timeout=timeout)
        return open_message(self.key, self.kid, f"v1/dev/{self.device}/dn/ota", raw)

    def no_chunk(self, wait: float = 0.5) -> bool:
        try:
            self.chunks.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def download(self, rel: bytes, size: int, chunk: int) -> bytes:
        """Every chunk in turn, one outstanding (as a device pulls), checked and reassembled."""
        out = bytearray()
        for i in range(-(-size // chunk)):
            self.request(rel, i)
            c = self.chunk()
            assert (c["type"], c["aud"], c["rel"], c["i"]) == ("chunk", self.device, rel, i), c
            assert len(c["data"]) == min(chunk, size - i * chunk)
            out += c["data"]
        return bytes(out)

    def drain(self) -> int:
        n = 0
        while True:
            try:
                self.chunks.get_nowait()
                n += 1
            except queue.Empty:
                return n

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
