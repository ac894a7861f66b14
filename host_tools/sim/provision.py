"""Provision a simulated board: a fresh 256-bit key, the registry entry, broker credentials and
the device's config.json in the directory that stands in for its flash."""
from __future__ import annotations

import os
from pathlib import Path

from host_tools.cloud.registry import Registry
from host_tools.sim.board import SimBoard

# Short timings so simulated boards notice faults in seconds, not minutes.
FAST = {"hb_s": 5, "keepalive_s": 4, "backoff_min_ms": 100, "backoff_max_ms": 1000}


def device_config(device: str, key: bytes, host: str, port: int, password: str, kind: str,
                  board: str, settings: dict | None = None, **extra) -> dict:
    cfg = {"device": device, "kid": f"{device}:1", "key": key.hex(),
           "broker": {"host": host, "port": port, "password": password},
           "board": {"name": board, "kind": kind}, "settings": dict(settings or {})}
    cfg.update(extra)
    return cfg


def provision_sim(broker, registry: Registry, root: Path, device: str, kind: str = "gate",
                  settings: dict | None = None, heapsize: str = "64K", ca_file: str | None = None,
                  **extra) -> SimBoard:
    """Register `device`, give it broker credentials and write its config; returns the (stopped) board.

    With `ca_file`, the device connects to the broker's TLS listener and verifies its certificate
    against that CA, copied onto the device's flash as ca.pem.
    """
    key = os.urandom(32)
    registry.add(device, key, kind, f"sim-{kind}")
    password = os.urandom(12).hex()
    broker.add_user(device, password)
    port = broker.tls_port if ca_file else broker.port
    cfg = device_config(device, key, "127.0.0.1", port, password, kind, f"sim-{kind}",
                        dict(FAST, **(settings or {})), **extra)
    board = SimBoard(Path(root) / device, cfg, heapsize=heapsize)
    if ca_file:
        (board.dir / "ca.pem").write_bytes(Path(ca_file).read_bytes())
        cfg["broker"].update(tls=True, ca="ca.pem", server_hostname="localhost")
        board.write_config(cfg)
    return board
