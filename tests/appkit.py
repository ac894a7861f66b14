"""A whole site for app tests: broker, registry, ingest worker + SQLite ledger, the scripted
pay-after provider and the session service, and simulated boards with their peripherals."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
from host_tools.sim.netfault import FaultyProxy
from host_tools.sim.peripherals import SimPeripherals
from host_tools.sim.provision import provision_sim
from tests.agentkit import CLOUD, Watcher, cloud

PARKING = {1: 1, 2: "CNY", 3: 15, 4: 3600, 5: 500, 6: 4000, 7: 10000}
VENDING = {1: 1, 2: "CNY", 8: [["cola", 350], ["chips", 600], ["water", 200]]}
RENTAL = {1: 1, 2: "CNY", 4: 3600, 5: 200, 6: 2000, 9: 9900}
TARIFFS = {"gate": PARKING, "vending": VENDING, "rental": RENTAL}


class Site:
    def __init__(self, broker, root: Path):
        self.broker = broker
        self.root = root
        self.reg = Registry(root / "registry.db")
        self.ledger = open_ledger(str(root / "ledger.db"))
        self.provider = ScriptedProvider(default_credit=100_000)
        self.svc = SessionService(self.reg, self.provider, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)).start()
        self.ingest = IngestWorker(self.reg, self.ledger, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD),
                                   hold_ms=0, on_commit=self.svc.on_commit)
        self.ingest.start()
        self.w = Watcher(broker, self.reg)
        self.c = cloud(broker, self.reg)
        self.boards: list = []

    def board(self, device: str, kind: str, tariff: dict | None = None, proxy: bool = False, **kw):
        """Provision, start and bring up a simulated board: online, trusted clock, tariff set.
        With `proxy`, the board reaches the broker only through its own FaultyProxy (`b.proxy`:
        partition / heal / drop_all cut it off the cloud while the cloud stays up)."""
        hw = SimPeripherals()
        b = provision_sim(self.broker, self.reg, self.root, device, board_file=f"sim-{kind}", peripherals=hw, **kw)
        b.hw = hw
        b.proxy = None
        if proxy:
            b.proxy = FaultyProxy(self.broker.port)
            cfg = json.loads((b.dir / "config.json").read_text())
            cfg["broker"]["port"] = b.proxy.port
            b.write_config(cfg)
        self.boards.append(b)
        self.boot(b)
        r = self.svc.set_tariff(device, tariff or TARIFFS[kind], wait=True)
        assert r.ok, (r.state, r.code, r.data)
        return b

    def boot(self, b, timeout: float = 20.0):
        """Start (or restart after a cut) a board and wait until it is online with trusted time."""
        n = len(b.lines)
        hellos = b.hw.hellos
        if not b.running:
            b.start(reset_cause="power_on")
        b.wait_for(r"\bonline\b", timeout, start=n)
        b.hw.wait_connected(10, after=hellos)
        assert self.c.sync_time(b.dir.name)
        b.wait_for(r"time set", 5, start=n)

    def send_time(self, device: str, t: int, ttl: int = 60) -> None:
        """Answer the device's time from now on as `t` is now (the site's TimeServer skewed for it),
        and have it ask at once (`sync_time`, signed to live `ttl`: a device clock hours ahead needs
        that much, and a `cmd_ttl_s` to match): its clock steps there."""
        self.c.serve_time().skew[device] = int(t) - time.time()
        assert self.c.sync_time(device, ttl=ttl)

    def cmd(self, device: str, name: str, args: dict | None = None, timeout: float = 10.0):
        """A signed command straight to the device (not through the session service)."""
        return self.c.send(device, name, args, timeout=timeout)

    def records(self, device: str):
        return sorted(self.ledger.records(device), key=lambda r: r.seq)

    def wait_records(self, device: str, n: int, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ledger.count(device) >= n:
                return self.records(device)
            time.sleep(0.1)
        raise AssertionError(f"{device}: {self.ledger.count(device)} records in the ledger, wanted {n}")

    def close(self):
        for b in self.boards:
            b.kill()
            b.hw.close()
            if getattr(b, "proxy", None) is not None:
                b.proxy.close()
        self.c.close()
        self.w.close()
        self.ingest.stop()
        self.svc.stop()
        self.ledger.close()


def make_site(broker, root) -> Site:
    return Site(broker, Path(root))


__all__ = ["Site", "make_site", "SimpleNamespace", "TARIFFS"]
