"""The cloud's firmware chunk server (SPEC §10, the update on the device): devices pull a release's
payload one chunk at a time, and this worker answers.

A device sends a chunk_req (12) on `v1/dev/{id}/up/ota` naming the release (`rel`: the payload's
SHA-256[:8]) and a chunk index `i`; the server verifies it under the device's key and answers on
`dn/ota` with a chunk (23): bytes [i x chunk, min(size, (i + 1) x chunk)) of the payload. Both at
QoS 0 (a lost one is asked again after 5 s). Whatever does not verify, names a release the store
does not hold or a chunk past its end is counted and never answered, so a forger gets nothing and
an attacker cannot turn the server into an amplifier.

Bounded work per message: a request costs one MAC check, one counter write (the answer's seq, as
the time server's) and at most one read of `chunk` bytes from the release's file; chunks are kept
in a small LRU cache, never whole payloads, and each device has a token bucket, so a flood of valid
requests from one device (a leaked key) costs a bounded rate of database writes and no memory.

    store = ReleaseStore("build/releases")            # the directory `edgepay release build` writes
    cs = ChunkServer(registry, mqtt, store)           # on an existing CloudMQTT connection
    cs = ChunkServer.connect(registry, BrokerSettings(...), store, share="chunks")   # or its own
    cs.counts("gate-1")["answered"]; cs.wait_answered("gate-1", n, timeout)           # tests
    cs.delay_s = 0.3                                  # tests: a slow cloud (each answer sent later)
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.registry import Device, Registry, RegistryError
from host_tools.protocol import ProtocolError, parse_topic, seal
from host_tools.protocol.manifest import Manifest, ManifestError, read_manifest

log = logging.getLogger("edgepay.chunks")
REQUESTS = "v1/dev/+/up/ota"
REL_LEN = 8


def rel_of(sha256: bytes) -> bytes:
    """A release's name on the wire (chunk_req/chunk `rel`): the first 8 bytes of its payload's SHA-256."""
    return sha256[:REL_LEN]


@dataclass(frozen=True)
class StoredRelease:
    """One release of the store: its signed manifest, the fields it names and its payload file."""
    name: str               # the file stem, BOARD-VERSION
    rel: bytes              # payload SHA-256[:8]
    manifest: Manifest
    signed: bytes           # the COSE_Sign1 bytes the `ota` command carries
    payload: Path

    @property
    def chunks(self) -> int:
        return -(-self.manifest.size // self.manifest.chunk)


class ReleaseStore:
    """A directory of releases as `edgepay release build` writes them (NAME.manifest beside
    NAME.bin), indexed by rel. A release is indexed only if its .bin has the size and SHA-256 its
    manifest names (checked once, when it is first seen); anything else is left out and named in
    `problems`. A rel not in the index rescans the directory, at most once every `rescan_s`, so a
    release built while the server runs is found and a flood of unknown rels costs no directory
    walks. Chunks are read from the files on demand, `cache_chunks` of them kept (LRU)."""

    def __init__(self, root: str | Path, *, cache_chunks: int = 256, rescan_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.cache_chunks = max(0, int(cache_chunks))
        self.rescan_s = rescan_s
        self.clock = clock
        self.problems: dict[str, str] = {}          # file name -> why it is not served
        self._by_rel: dict[bytes, StoredRelease] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # manifest name -> (mtime_ns, size) when judged
        self._cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._scanned_at: float | None = None
        self.reads = 0                              # chunk reads from a file (cache misses)
        self.scan()

    # ---- the index ---------------------------------------------------------------------------
    def scan(self) -> int:
        """(Re)index the directory: new or changed manifests are read and their payloads hashed;
        removed ones drop out. How many releases are served."""
        with self._lock:
            self._scanned_at = self.clock()
            try:
                manifests = sorted(p for p in self.root.glob("*.manifest") if p.is_file())
            except OSError as e:
                log.warning("release store %s unreadable: %s", self.root, e)
                manifests = []
            names = {p.name for p in manifests}
            for rel, r in list(self._by_rel.items()):
                if r.name + ".manifest" not in names or not r.payload.is_file():
                    self._drop(rel)
            for name in list(self._seen):
                if name not in names:
                    del self._seen[name]
                    self.problems.pop(name, None)
            for p in manifests:
                try:
                    st = p.stat()
                except OSError:
                    continue
                stamp = (st.st_mtime_ns, st.st_size)
                if self._seen.get(p.name) == stamp:
                    continue
                self._seen[p.name] = stamp
                for rel in [k for k, r in self._by_rel.items() if r.name == p.stem]:
                    self._drop(rel)  # a changed manifest is judged again from scratch
                try:
                    r = self._load(p)
                except (OSError, ManifestError, ValueError) as e:
                    self.problems[p.name] = str(e)
                    log.warning("release %s not served: %s", p, e)
                    continue
                self.problems.pop(p.name, None)
                other = self._by_rel.get(r.rel)
                if other is not None and other.name != r.name:
                    log.info("release %s has the payload of %s (rel %s): serving one", r.name, other.name, r.rel.hex())
                self._by_rel[r.rel] = r
            return len(self._by_rel)

    def _drop(self, rel: bytes) -> None:
        self._by_rel.pop(rel, None)
        for k in [k for k in self._cache if k[0] == rel]:
            del self._cache[k]

    @staticmethod
    def _load(manifest_path: Path) -> StoredRelease:
        signed = manifest_path.read_bytes()
        m = read_manifest(signed)
        payload = manifest_path.with_suffix(".bin")
        h, size = hashlib.sha256(), 0
        with payload.open("rb") as f:
            while block := f.read(1 << 16):
                h.update(block)
                size += len(block)
                if size > m.size:
                    break
        if size != m.size or h.digest() != m.sha256:
            raise ValueError(f"{payload.name} is not the payload its manifest names (size or sha256 differs)")
        return StoredRelease(manifest_path.stem, rel_of(m.sha256), m, signed, payload)

    def releases(self) -> list[StoredRelease]:
        with self._lock:
            return sorted(self._by_rel.values(), key=lambda r: r.name)

    def get(self, rel: bytes) -> StoredRelease | None:
        """The release named `rel`; on a miss, a throttled rescan first."""
        with self._lock:
            r = self._by_rel.get(rel)
            due = self._scanned_at is None or self.clock() - self._scanned_at >= self.rescan_s
        if r is None and due:
            self.scan()
            with self._lock:
                r = self._by_rel.get(rel)
        return r

    def find(self, name: str) -> StoredRelease | None:
        """A release by file stem (BOARD-VERSION) or rel in hex."""
        with self._lock:
            for r in self._by_rel.values():
                if name in (r.name, r.rel.hex()):
                    return r
        return None

    # ---- chunks -------------------------------------------------------------------------------
    def chunk(self, rel: bytes, i: int) -> bytes | None:
        """Chunk `i` of release `rel` (None: no such release, or i past its end)."""
        r = self.get(rel)
        if r is None or not 0 <= i < r.chunks:
            return None
        key = (rel, i)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        m = r.manifest
        n = min(m.size, (i + 1) * m.chunk) - i * m.chunk
        try:
            fd = os.open(r.payload, os.O_RDONLY)
            try:
                data = os.pread(fd, n, i * m.chunk)
            finally:
                os.close(fd)
        except OSError as e:
            data, why = b"", str(e)
        else:
            why = f"chunk {i} is short ({len(data)} of {n} bytes)"
        if len(data) != n:  # the file went or shrank under us: out of the index, judged again at a rescan
            log.warning("release %s: %s", r.name, why)
            with self._lock:
                self._seen.pop(r.name + ".manifest", None)
                self._drop(rel)
            return None
        with self._lock:
            self.reads += 1
            if self.cache_chunks:
                self._cache[key] = data
                while len(self._cache) > self.cache_chunks:
                    self._cache.popitem(last=False)
        return data

    def cached(self) -> int:
        with self._lock:
            return len(self._cache)


@dataclass
class DeviceStats:
    requests: int = 0   # chunk_reqs on this device's topic (verified or not)
    answered: int = 0   # chunks sent
    refused: int = 0    # not answered: forged, unknown rel, past the end, over the rate


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens, self.at = tokens, at


class ChunkServer:
    """Answers chunk_reqs from `store`. `rate` (chunks a second) and `burst` bound what one device
    is answered: a device pulls one chunk at a time, each answer its next request's trigger, so
    its rate is its round trip; a flood beyond it is refused (counted), never queued."""

    KEY_TTL_S = 30.0

    def __init__(self, registry: Registry, mqtt: CloudMQTT, store: ReleaseStore, *,
                 clock: Callable[[], float] = time.time, share: str | None = None,
                 rate: float = 400.0, burst: int = 64):
        self.registry = registry
        self.mqtt = mqtt
        self.store = store
        self.clock = clock
        self.rate, self.burst = float(rate), float(burst)
        self.stats: dict[str, DeviceStats] = {}     # registered devices only (bounded by the registry)
        self.reasons: Counter[str] = Counter()      # why requests went unanswered
        self.unknown = 0                            # requests on topics of no registered device
        self.delay_s = 0.0                          # tests: answers go out this much later (a slow cloud)
        self._keys: dict[str, tuple[Device, float]] = {}   # device -> (as read, when)
        self._buckets: dict[str, _Bucket] = {}
        self._cv = threading.Condition()
        self._own = False
        # With `share`, N servers split the requests ($share/<group>/); a device's requests may
        # then reach different servers: each answers what it holds, from one shared store.
        mqtt.subscribe(mqtt.settings.work_share(share, REQUESTS), self._on_req, qos=0)

    @classmethod
    def connect(cls, registry: Registry, broker: BrokerSettings, store: ReleaseStore, **kw) -> "ChunkServer":
        cs = cls(registry, CloudMQTT(broker), store, **kw)
        cs._own = True
        cs.mqtt.connect()
        return cs

    def close(self) -> None:
        if self._own:
            self.mqtt.close()

    def counts(self, device: str) -> dict[str, int]:
        """{"requests", "answered", "refused"} of `device` so far."""
        with self._cv:
            s = self.stats.get(device) or DeviceStats()
            return {"requests": s.requests, "answered": s.answered, "refused": s.refused}

    def wait_answered(self, device: str, n: int, timeout: float) -> bool:
        """Wait until `device` has been answered at least `n` chunks in all."""
        with self._cv:
            return self._cv.wait_for(lambda: self.stats.get(device, DeviceStats()).answered >= n, timeout)

    def wait_requests(self, device: str, n: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self.stats.get(device, DeviceStats()).requests >= n, timeout)

    # ---- the handler (paho's network thread) ------------------------------------------------
    def _device(self, device: str, fresh: bool = False) -> Device | None:
        """The registry's device, cached for KEY_TTL_S (a key rotation or a revocation is seen
        within that, and at once after a MAC failure); None if it is not registered."""
        now = time.monotonic()
        hit = None if fresh else self._keys.get(device)
        if hit is not None and now - hit[1] < self.KEY_TTL_S:
            return hit[0]
        try:
            dev = self.registry.get(device)
        except RegistryError:
            self._keys.pop(device, None)
            return None
        self._keys[device] = (dev, now)
        return dev

    def _open(self, device: str, topic: str, payload: bytes) -> tuple[Device | None, dict | None, str]:
        dev = self._device(device)
        if dev is None:
            return None, None, "unknown_device"
        try:
            msg, now_dev = self.registry.open_uplink_message(dev, topic, payload)  # by its kid (SPEC §11)
            if now_dev is not dev:
                self._keys[device] = (now_dev, time.monotonic())
            return now_dev, msg, ""
        except ProtocolError as e:
            code = e.code
        if code not in ("bad_kid", "bad_mac"):
            return dev, None, code
        fresh = self._device(device, fresh=True)  # its key may have been rotated since we cached it
        if fresh is None or (fresh.key, fresh.kid) == (dev.key, dev.kid):
            return dev, None, code
        try:
            msg, now_dev = self.registry.open_uplink_message(fresh, topic, payload)
            return now_dev, msg, ""
        except ProtocolError as e:
            return fresh, None, e.code

    def _refuse(self, device: str | None, why: str, topic: str) -> None:
        with self._cv:
            self.reasons[why] += 1
            if device is None:
                self.unknown += 1
            else:
                self.stats[device].refused += 1
            self._cv.notify_all()
        log.debug("chunk_req on %s refused: %s", topic, why)

    def _take(self, device: str) -> bool:
        now = time.monotonic()
        b = self._buckets.get(device)
        if b is None:
            b = self._buckets[device] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def _on_req(self, topic: str, payload: bytes) -> None:
        try:
            device, _ = parse_topic(topic)
        except ProtocolError:
            self._refuse(None, "bad_topic", topic)
            return
        dev, req, why = self._open(device, topic, payload)
        if dev is None:
            self._refuse(None, why, topic)
            return
        with self._cv:
            self.stats.setdefault(device, DeviceStats()).requests += 1
        if req is None:
            self._refuse(device, why, topic)
            return
        if not dev.active:
            self._refuse(device, dev.status, topic)
            return
        if not self._take(device):
            self._refuse(device, "rate", topic)
            return
        rel, i = req["rel"], req["i"]
        data = self.store.chunk(rel, i)
        if data is None:
            self._refuse(device, "past_end" if self.store.get(rel) is not None else "unknown_rel", topic)
            return
        t = f"v1/dev/{device}/dn/ota"
        # no seq, no iat (SPEC §10): the request makes a chunk fresh and the digest proves its bytes,
        # so a chunk costs no registry write and 10-odd bytes less on the wire
        msg = {"type": "chunk", "aud": device, "rel": rel, "i": i, "data": data}
        try:
            sealed = seal(dev.key, dev.kid, t, msg)
        except ProtocolError as e:  # a chunk the codec will not carry: the release is wrong
            self._refuse(device, "unsendable", topic)
            log.error("chunk %d of %s for %s not sent: %s", i, rel.hex(), device, e)
            return
        if self.delay_s > 0:  # never a sleep here: it would stall every handler on this connection
            threading.Timer(self.delay_s, self._send, (device, t, sealed)).start()
        else:
            self._send(device, t, sealed)

    def _send(self, device: str, t: str, sealed: bytes) -> None:
        self.mqtt.publish(t, sealed, qos=0, timeout=None)
        with self._cv:
            self.stats[device].answered += 1
            self._cv.notify_all()
