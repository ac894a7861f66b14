"""Provision a simulated board: a fresh 256-bit key, the registry entry, broker credentials and
the device's config.json in the directory that stands in for its flash."""
from __future__ import annotations

import json
import os
from pathlib import Path

from host_tools.boardcheck import device_bytes
from host_tools.cloud.registry import Registry
from host_tools.provision import broker_section
from host_tools.sim.board import ROOT, SimBoard

BOARDS = ROOT / "boards"

# Short timings so simulated boards notice faults in seconds, not minutes.
FAST = {"hb_s": 5, "keepalive_s": 4, "backoff_min_ms": 100, "backoff_max_ms": 1000}


def device_config(device: str, key: bytes, host: str, port: int, password: str, kind: str,
                  board: str, settings: dict | None = None, **extra) -> dict:
    cfg = {"device": device, "kid": f"{device}:1", "key": key.hex(),
           "broker": {"host": host, "port": port, "password": password},
           "board": {"name": board, "kind": kind}, "settings": dict(settings or {})}
    cfg.update(extra)
    return cfg


def board_definition(board_file: str | Path) -> dict:
    """A board file's definition: a path, or a name under boards/ ("sim-gate" or "sim-gate.json")."""
    p = Path(board_file)
    if not p.exists():
        p = BOARDS / (p.name if p.suffix == ".json" else p.name + ".json")
    return json.loads(p.read_text())


def provision_sim(broker, registry: Registry, root: Path, device: str, kind: str | None = None,
                  settings: dict | None = None, heapsize: str | None = None, ca_file: str | None = None,
                  peripherals=None, board_file: str | Path | None = None, clock_rate: int | None = None,
                  broker_port: int | None = None, client_cert: tuple[bytes, bytes] | None = None,
                  brokers: list[tuple[str, int]] | None = None, **extra) -> SimBoard:
    """Register `device`, give it broker credentials and write its config; returns the (stopped) board.

    With `ca_file`, the device connects to the broker's TLS listener and verifies its certificate
    against that CA, copied onto the device's flash as ca.pem.
    With `board_file` (a boards/*.json, by path or name), its whole definition is checked in full
    (host_tools/boardcheck.py: BoardError, a ValueError, before anything is registered) and goes
    on the device as board.json, the config's "board" section keeping its stamp; kind, board name, heap budget (heap_kb) and
    watchdog (wdt_ms) come from it unless given. Only sim boards ("sim": true) run on the VM.
    With `peripherals` (a host_tools.sim.peripherals.SimPeripherals), the config names its port
    (cfg["sim"]), so the board's sim HAL connects to it.
    With `clock_rate` (simulator only, firmware/clock.py), the device's clock runs that many times
    real time (host_tools/sim/world.py plays an hour in a minute this way).
    With `broker_port`, the device connects there instead of the broker's own port (a FaultyProxy).
    With `brokers` ([(host, port), ...], 1..4), the device tries those addresses in turn instead
    (config "broker": {"brokers": ...}); each must know the device's password (`broker` is told).
    With `client_cert` (certificate, key: DER, host_tools.tls.device_der) and `ca_file`, the device
    also presents that certificate (mutual TLS), kept on its flash as device.der and device.key.der.
    """
    bdef = None
    if board_file is not None:
        bdef = board_definition(board_file)
        if not bdef.get("sim"):
            raise ValueError(f"{board_file}: not a sim board (\"sim\": true); it cannot run on the VM")
        if kind is not None and kind != bdef.get("kind"):
            raise ValueError(f"{board_file} is a {bdef.get('kind')} board, not {kind}")
        device_bytes(bdef)  # the host's full check, before anything is registered
        kind = bdef.get("kind")
        if heapsize is None and isinstance(bdef.get("heap_kb"), int):
            heapsize = f"{bdef['heap_kb']}K"
        if "wdt_ms" not in extra and isinstance(bdef.get("wdt_ms"), int):
            extra["wdt_ms"] = bdef["wdt_ms"]
    kind = kind or "gate"
    name = bdef.get("name") if bdef else None
    bname = name if isinstance(name, str) else f"sim-{kind}"
    key = os.urandom(32)
    registry.add(device, key, kind, bname)
    password = os.urandom(12).hex()
    broker.add_user(device, password)
    port = broker_port or (broker.tls_port if ca_file else broker.port)
    cfg = device_config(device, key, "127.0.0.1", port, password, kind, bname,
                        dict(FAST, **(settings or {})), **extra)
    if brokers is not None:
        cfg["broker"] = broker_section(list(brokers), password)
    if bdef is not None:
        cfg["board"] = bdef
    if peripherals is not None:
        cfg["sim"] = {"host": "127.0.0.1", "port": peripherals.port}
    if clock_rate is not None and clock_rate != 1:
        cfg.setdefault("sim", {})["clock_rate"] = int(clock_rate)
    board = SimBoard(Path(root) / device, cfg, heapsize=heapsize or "64K")
    if ca_file:
        (board.dir / "ca.pem").write_bytes(Path(ca_file).read_bytes())
        cfg["broker"].update(tls=True, ca="ca.pem", server_hostname="localhost")
        if client_cert is not None:
            (board.dir / "device.der").write_bytes(client_cert[0])
            (board.dir / "device.key.der").write_bytes(client_cert[1])
            cfg["broker"].update(cert="device.der", certkey="device.key.der")
        board.write_config(cfg)
    return board
