"""Firmware updates (issue 12 §5, SPEC §10) on VM boards with a real Mosquitto and the cloud's chunk
server (host_tools/cloud/chunkserver.py), one signed release of sim-gate's own bundle in 1536-byte
chunks (tests/otakit.py builds it; the boards are tests/appkit.py's Site's, 64K data heap each).

    .venv/bin/python bench/ota.py [--boards N] [--only verify_ms,wire_ratio,...]

- verify_ms: manifest verification on the VM at 64K heap (release.open_manifest: CBOR, shape, key,
  Ed25519 signature, fields), as bench/ed25519_vm.py measures it (run here, its last line kept).
- wire_ratio: every TCP payload byte between the board and the broker, both directions, from the
  board's first chunk_req to the PUBACK of its `downloaded` event (MQTT framing, requests, PUBACKs,
  its other traffic in that time: events, pings, a heartbeat), over the release's payload bytes.
  Counted by a TCP proxy between the board and the broker (no TLS) that splits each direction into
  MQTT packets. The board runs the firmware's default hb_s/keepalive_s (30 s), not the tests' 5/4 s.
- resent_chunks_after_drop: chunks the server sent beyond one per chunk (its `answered` count
  minus the chunks of the release), after a TCP drop (the proxy cuts the connection) and after a
  power cut (SIGKILL, then a boot: the firmware resumes from its persisted count), each halfway.
- download_heap_kb: the board's live heap while a download runs (get_state `heap_used`, i.e.
  gc.mem_alloc() after gc.collect(), sampled back to back until `downloaded`), minus the code
  residency of the board's bundle, exactly as bench/app_heap.py counts live_kb (the VM holds code
  a board keeps in flash; that allowance includes the updater's modules, which the VM holds only
  while updating: idle_heap_kb, counted the same way, is low by updater_code_kb).
- campaign_s: `edgepay ota deploy`'s campaign through the rollout engine (Rollouts with
  OtaAction and OtaProgress as host_tools/cli/campaign.py wires them, the CLI's default cohorts
  5,25,50,100, rate 60/min, abort share 0.2) to N boards (--boards, default 20), from create to
  every board confirmed: each downloads, installs, reboots (this bench plays the reset: a VM that
  exits 4 is started again, as a board's boot loader would), boots its trial and confirms it.

Last line: {"verify_ms", "wire_ratio", "resent_chunks_after_drop": {"tcp_drop", "power_cut"},
"download_heap_kb", "campaign_s", "goals", "within", "within_goal", ...}; a figure that could not
be measured (a download that never ends, a campaign past its deadline) is null, with its reason in
"<figure>_failed", and the other figures still run.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _kit import CLOUD, broker, workdir
from host_tools.build import code_allowance, compile_firmware
from host_tools.bundle import board_bundle
from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ota_action import OtaAction, OtaProgress
from host_tools.cloud.rollout import Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.protocol import ProtocolError, open_message
from host_tools.sim.board import Resetter
from host_tools.sim.netfault import FaultyProxy
from host_tools.sim.provision import board_definition
from tests.appkit import Site
from tests.otakit import Releases, ota_events, wait_state

BENCH = Path(__file__).resolve().parent
BOARD = "sim-gate"
CHUNK = 1536
SETTINGS = {"hb_s": 30, "keepalive_s": 30}  # the firmware's defaults (firmware/config.py)
GOALS = {"verify_ms": 30, "wire_ratio": 1.15, "resent_chunks_after_drop": 1, "download_heap_kb": 40,
         "campaign_s": 120}
FIGURES = tuple(GOALS)
# the CLI's deploy defaults (host_tools/cli/ota.py)
COHORTS, RATE, ABORT_SHARE, TIMEOUT_S = (5, 25, 50, 100), 60.0, 0.2, 1800.0
PUBLISH, PUBACK = 3, 4
UPDATER = ("ota", "release", "ed25519", "sha512")  # firmware/ota.py: imported only with an update in hand


def note(text: str) -> None:
    print(f"ota: {text}", file=sys.stderr, flush=True)


# ---- the wire -------------------------------------------------------------------------------
@dataclass
class Packet:
    up: bool               # board -> broker
    type: int
    size: int              # bytes on the wire, fixed header included
    topic: str = ""
    pid: int | None = None
    payload: bytes = b""


def split_packets(buf: bytearray) -> list[bytes]:
    """Whole MQTT packets off the front of `buf` (what is left is an incomplete one)."""
    out = []
    while len(buf) >= 2:
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            b = buf[i]
            n += (b & 127) * mult
            mult *= 128
            i += 1
            if not b & 128:
                break
        if len(buf) < i + n:
            break
        out.append(bytes(buf[:i + n]))
        del buf[:i + n]
    return out


def parse_packet(raw: bytes, up: bool) -> Packet:
    """An MQTT 3.1.1 packet: its type, size, and a PUBLISH's topic, packet id and payload."""
    t, qos = raw[0] >> 4, (raw[0] >> 1) & 3
    i = 1
    while raw[i] & 128:
        i += 1
    body = raw[i + 1:]
    p = Packet(up, t, len(raw))
    if t == PUBLISH:
        tl = int.from_bytes(body[:2], "big")
        p.topic = body[2:2 + tl].decode("utf-8", "replace")
        rest = body[2 + tl:]
        if qos:
            p.pid, rest = int.from_bytes(rest[:2], "big"), rest[2:]
        p.payload = bytes(rest)
    elif t == PUBACK:
        p.pid = int.from_bytes(body[:2], "big")
    return p


class CountingProxy(FaultyProxy):
    """A FaultyProxy (drop_all cuts the board off) that also keeps every MQTT packet it passes, both
    directions, in the order it passed them."""

    def __init__(self, target_port: int):
        self.packets: list[Packet] = []
        self._bufs: dict[socket.socket, bytearray] = {}
        super().__init__(target_port)

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> None:
        up = src in self._born  # the accepted side is the board's
        buf = self._bufs.setdefault(src, bytearray())
        buf += data
        self.packets += [parse_packet(raw, up) for raw in split_packets(buf)]
        super()._forward(src, dst, data)


def download_window(packets: list[Packet], device: str, key: bytes, kid: bytes | str) -> list[Packet]:
    """The packets from the board's first chunk_req to the broker's PUBACK of its `downloaded`
    event (its last packet when the broker sent none)."""
    base = f"v1/dev/{device}/"
    start = next((k for k, p in enumerate(packets) if p.up and p.type == PUBLISH and p.topic == base + "up/ota"), None)
    if start is None:
        raise RuntimeError(f"{device}: no chunk_req went through the proxy")
    end = None
    for k in range(start, len(packets)):
        p = packets[k]
        if p.up and p.type == PUBLISH and p.topic == base + "up/evt":
            try:
                m = open_message(key, kid, p.topic, p.payload)
            except ProtocolError:
                continue
            if m.get("code") == "ota" and (m.get("detail") or {}).get("st") == "downloaded":
                end = k
                break
    if end is None:
        raise RuntimeError(f"{device}: no downloaded event went through the proxy")
    ack = packets[end].pid
    if ack is not None:
        end = next((k for k in range(end + 1, len(packets))
                    if not packets[k].up and packets[k].type == PUBACK and packets[k].pid == ack), end)
    return packets[start:end + 1]


def wire_breakdown(window: list[Packet], device: str) -> dict[str, int]:
    base = f"v1/dev/{device}/"
    evt_pids = {p.pid for p in window if p.up and p.type == PUBLISH and p.topic == base + "up/evt"}
    out = {"chunks": 0, "chunk_reqs": 0, "events_and_acks": 0, "other": 0}
    for p in window:
        if p.type == PUBLISH and p.topic == base + "dn/ota":
            out["chunks"] += p.size
        elif p.type == PUBLISH and p.topic == base + "up/ota":
            out["chunk_reqs"] += p.size
        elif (p.type == PUBLISH and p.topic == base + "up/evt") or (p.type == PUBACK and not p.up and p.pid in evt_pids):
            out["events_and_acks"] += p.size
        else:
            out["other"] += p.size
    return out


# ---- the rig --------------------------------------------------------------------------------
class Rig:
    """A Site (broker, registry, ingest, sessions, the cloud's command client and time server), one
    release of sim-gate's bundle, and the chunk server on its own connection (as `edgepay serve`'s
    chunks part runs it)."""

    def __init__(self, root: Path | None = None):
        self.root = root or workdir()
        self.broker = broker()
        self.site = Site(self.broker, self.root)
        self.rel = Releases(self.root / "rel")
        self.release = self.rel.build(BOARD, "0.2.0", 1, chunk=CHUNK)
        self.m = self.release.manifest
        self.chunks = math.ceil(self.m.size / self.m.chunk)
        self.cs = ChunkServer.connect(self.site.reg, BrokerSettings("127.0.0.1", self.broker.cloud_port, *CLOUD),
                                      ReleaseStore(self.rel.dir))
        self.proxies: list[FaultyProxy] = []

    def board(self, device: str, proxy: CountingProxy | None = None):
        kw = {"broker_port": proxy.port} if proxy is not None else {}
        return self.site.board(device, "gate", ota=self.rel.config(), settings=SETTINGS, **kw)

    def proxy(self) -> CountingProxy:
        p = CountingProxy(self.broker.port)
        self.proxies.append(p)
        return p

    def deploy(self, device: str) -> None:
        r = self.site.cmd(device, "ota", {1: self.release.signed}, timeout=30)
        if not (r.ok and r.data == {"st": "downloading"}):
            raise RuntimeError(f"{device}: ota answered {r.state} {r.code} {r.data}")

    def resent(self, device: str) -> dict:
        c = self.cs.counts(device)
        return {"resent": c["answered"] - self.chunks, "requests": c["requests"], "answered": c["answered"],
                "refused": c["refused"]}

    def close(self) -> None:
        self.cs.close()
        self.site.close()
        for p in self.proxies:
            p.close()
        self.broker.close()


# ---- the figures ----------------------------------------------------------------------------
def measure_verify() -> dict:
    p = subprocess.run([sys.executable, str(BENCH / "ed25519_vm.py")], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"bench/ed25519_vm.py exited {p.returncode}: {p.stderr[-1000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"verify_ms": r["manifest_verify_ms"], "ed25519_verify_ms": r["verify_ms"],
            "verify_peak_heap_kb": r["peak_heap_kb"], "verify_esp32_est_s": r["esp32_est_s"]}


def measure_wire(rig: Rig, device: str = "ota-wire") -> dict:
    proxy = rig.proxy()
    b = rig.board(device, proxy)
    rig.deploy(device)
    wait_downloaded(rig, b, device)
    time.sleep(0.5)  # the downloaded event's PUBACK through the proxy
    dev = rig.site.reg.get(device)
    window = download_window(list(proxy.packets), device, dev.key, dev.kid)
    wire = sum(p.size for p in window)
    b.kill()
    parts = wire_breakdown(window, device)
    n = {t: sum(1 for p in window if p.type == PUBLISH and p.topic == f"v1/dev/{device}/{t}") for t in ("dn/ota", "up/ota")}
    return {"wire_ratio": round(wire / rig.m.size, 4), "wire_bytes": wire, "payload_bytes": rig.m.size,
            "wire_breakdown": parts, "wire_packets": len(window),
            # what each chunk costs beyond its data: MQTT header and topic, COSE_Mac0 (kid, 32-byte
            # tag) and the payload map (aud, iat, seq, rel, i); the device id is in 5 of these fields
            "wire_overhead_per_chunk": {"chunk": round((parts["chunks"] - rig.m.size) / max(1, n["dn/ota"]), 1),
                                        "chunk_req": round(parts["chunk_reqs"] / max(1, n["up/ota"]), 1)},
            "wire_device_id_len": len(device), "resent_chunks_clean": rig.resent(device)["resent"]}


def wait_downloaded(rig: Rig, b, device: str, timeout: float = 180.0) -> None:
    """Until the board's `downloaded` event; a RuntimeError naming the board's last error if none
    comes (a download that never ends is a result to report, not a hang)."""
    try:
        wait_state(rig.site.w, device, "downloaded", timeout)
    except AssertionError:
        errors = [ln for ln in b.log().splitlines() if "error" in ln or "ota" in ln]
        b.kill()
        raise RuntimeError(f"{device}: no downloaded event in {timeout:g} s ({rig.cs.counts(device)}); "
                           f"its log: {' | '.join(errors[-3:])}"[:600]) from None


def _halfway(rig: Rig, device: str) -> None:
    if not rig.cs.wait_answered(device, rig.chunks // 2, 180):
        raise RuntimeError(f"{device}: not halfway in 180 s ({rig.cs.counts(device)})")


def measure_drop(rig: Rig, device: str = "ota-drop") -> dict:
    proxy = rig.proxy()
    b = rig.board(device, proxy)
    rig.deploy(device)
    _halfway(rig, device)
    proxy.drop_all()
    t0 = time.monotonic()
    wait_downloaded(rig, b, device)
    out = rig.resent(device)
    out["resume_s"] = round(time.monotonic() - t0, 1)
    b.kill()
    return out


def measure_power_cut(rig: Rig, device: str = "ota-cut") -> dict:
    b = rig.board(device)
    rig.deploy(device)
    _halfway(rig, device)
    b.kill()                          # the power goes: nothing more runs on the board
    t0 = time.monotonic()
    rig.site.boot(b)                  # power back: boot, online, trusted time
    wait_downloaded(rig, b, device)
    out = rig.resent(device)
    out["resume_s"] = round(time.monotonic() - t0, 1)
    b.kill()
    return out


def updater_code(bundle: Path) -> int:
    """The residency of the modules the agent imports only with an update in hand (part of the
    bundle's allowance, so subtracted from idle samples too, where the VM does not hold them)."""
    with tempfile.TemporaryDirectory(prefix="edgepay-bench-") as t:
        rest = Path(t) / "bundle"
        shutil.copytree(bundle, rest, ignore=shutil.ignore_patterns(".*"))
        for m in UPDATER:  # top level only: hal/ota.mpy (the slots) is loaded at idle too
            (rest / f"{m}.mpy").unlink()
        return code_allowance(bundle) - code_allowance(rest)


def measure_heap(rig: Rig, device: str = "ota-heap") -> dict:
    b = rig.board(device)
    full = compile_firmware()
    bundle = board_bundle(full, board_definition(BOARD)) or full  # what the board's VM runs (SimBoard.start)
    code = code_allowance(bundle)

    def heap() -> int:
        r = rig.site.cmd(device, "get_state", timeout=15)
        if not r.ok:
            raise RuntimeError(f"{device}: get_state {r.state} {r.code}")
        return int(r.data["heap_used"])
    idle = [heap() for _ in range(5)]
    rig.deploy(device)
    samples = []
    deadline = time.monotonic() + 180
    while not any(e.get("st") == "downloaded" for e in ota_events(rig.site.w, device)):
        if time.monotonic() > deadline:
            wait_downloaded(rig, b, device, 0)  # raises, with the board's last error
        h = heap()
        if not any(e.get("st") == "downloaded" for e in ota_events(rig.site.w, device)):
            samples.append(h)  # answered before the download ended
    b.kill()
    if not samples:
        raise RuntimeError(f"{device}: the download ended before one sample")
    return {"download_heap_kb": round((max(samples) - code) / 1024, 2), "idle_heap_kb": round((max(idle) - code) / 1024, 2),
            "download_vm_heap_kb": round(max(samples) / 1024, 2), "code_kb": round(code / 1024, 2),
            "updater_code_kb": round(updater_code(bundle) / 1024, 2),
            "heap_samples": len(samples), "heap_samples_kb": [round((x - code) / 1024, 1) for x in samples]}


def measure_campaign(rig: Rig, n: int, deadline_s: float = 600.0) -> dict:
    boards = []
    t0 = time.monotonic()
    for k in range(n):
        boards.append(rig.board(f"camp-{k:02d}"))
    note(f"{n} boards up in {time.monotonic() - t0:.0f} s")
    devices = [b.dir.name for b in boards]
    resets = Resetter(boards)
    store = RolloutStore.open(str(rig.root / "ledger-rollouts.db"))
    client = rig.site.c
    ro = Rollouts(store, {"ota": OtaAction(client, OtaProgress(store.db))})
    try:
        t0 = time.monotonic()
        ro.create("ota-bench", "ota", OtaAction.spec(rig.release.signed, rig.m, f"{BOARD}-0.2.0"), devices,
                  cohorts=COHORTS, rate=RATE, timeout_s=TIMEOUT_S, abort_share=ABORT_SHARE)
        last = None
        while True:
            ro.tick()
            c = ro.status("ota-bench")
            line = f"{c.state} {dict(sorted(c.counts.items()))}"
            if line != last:
                note(f"campaign {time.monotonic() - t0:.0f} s: {line}")
                last = line
            if c.final or time.monotonic() - t0 > deadline_s:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        targets = store.targets("ota-bench")
    finally:
        resets.stop()
        store.close()
    per = sorted(t.finished_at - t.started_at for t in targets if t.finished_at and t.started_at)
    failed = {t.device: t.state + (f": {t.reason}" if t.reason else "") for t in targets if t.state != "succeeded"}
    confirmed = sum(1 for d in devices if any(e.get("st") == "confirmed" for e in ota_events(rig.site.w, d)))
    return {"campaign_s": round(took, 1) if c.state == "done" and not failed else None,
            "campaign_state": c.state, "campaign_counts": c.counts, "campaign_boards": n,
            "campaign_confirmed": confirmed, "campaign_on_ota_0": sum(1 for b in boards if b.booted == "ota_0"), "campaign_failed": failed, "campaign_reboots": resets.reboots,
            "campaign_device_s": {"p50": round(per[len(per) // 2], 1), "max": round(per[-1], 1)} if per else None,
            "campaign_elapsed_s": round(took, 1),
            "campaign_params": {"cohorts": list(COHORTS), "rate_per_min": RATE, "abort_share": ABORT_SHARE}}


def within(out: dict) -> dict:
    res = {}
    for name, goal in GOALS.items():
        v = out.get(name)
        if name == "resent_chunks_after_drop" and isinstance(v, dict):
            v = max(v.values()) if None not in v.values() else None
        if name in out:
            res[name] = v is not None and v <= goal
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Firmware update figures (issue 12 §5) on VM boards.")
    ap.add_argument("--boards", type=int, default=20, help="boards in the campaign [20]")
    ap.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures to measure [all]")
    a = ap.parse_args(argv)
    only = [f for f in a.only.split(",") if f]
    bad = [f for f in only if f not in FIGURES]
    if bad:
        ap.error(f"unknown figure(s) {', '.join(bad)}; known: {', '.join(FIGURES)}")
    t0 = time.time()
    out: dict = {}

    def figure(name: str, fn) -> None:
        """One figure into `out`; a figure that cannot be measured is None with why (as app_heap)."""
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - reported in the JSON, the other figures still run
            out[name], out[f"{name}_failed"] = None, str(e) or type(e).__name__
            note(f"{name} failed: {out[name + '_failed']}")
            return
        out.update(got)
        note(f"{name} {out.get(name)}")

    def resent(rig: Rig) -> dict:
        drop, cut = measure_drop(rig), measure_power_cut(rig)
        return {"resent_chunks_after_drop": {"tcp_drop": drop["resent"], "power_cut": cut["resent"]},
                "resent_detail": {"tcp_drop": drop, "power_cut": cut}}

    if "verify_ms" in only:
        figure("verify_ms", measure_verify)
    if set(only) - {"verify_ms"}:
        rig = Rig()
        try:
            out["chunk"], out["chunks"] = rig.m.chunk, rig.chunks
            runs = {"wire_ratio": measure_wire, "resent_chunks_after_drop": resent, "download_heap_kb": measure_heap,
                    "campaign_s": lambda r: measure_campaign(r, a.boards)}
            for name, fn in runs.items():
                if name in only:
                    figure(name, lambda fn=fn: fn(rig))
        finally:
            rig.close()
    out["goals"] = {k: v for k, v in GOALS.items() if k in out}
    out["within"] = within(out)
    out["within_goal"] = all(out["within"].values())
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
