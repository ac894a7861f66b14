"""A whole site for app tests: broker, registry, ingest worker + SQLite ledger, the scripted
pay-after provider and the session service, and simulated boards with their peripherals."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger import open_ledger
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
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
        self.svc = SessionService(self.reg, self.provider, "127.0.0.1", broker.cloud_port, *CLOUD).start()
        self.ingest = IngestWorker(self.reg, self.ledger, "127.0.0.1", broker.cloud_port, *CLOUD,
                                   hold_ms=0, on_commit=self.svc.on_commit)
        self.ingest.start()
        self.w = Watcher(broker, self.reg)
        self.c = cloud(broker, self.reg)
        self.boards: list = []

    def board(self, device: str, kind: str, tariff: dict | None = None, **kw):
        """Provision, start and bring up a simulated board: online, trusted clock, tariff set."""
        hw = SimPeripherals()
        b = provision_sim(self.broker, self.reg, self.root, device, board_file=f"sim-{kind}", peripherals=hw, **kw)
        b.hw = hw
        self.boards.append(b)
        b.start()
        b.wait_for("online", 20)
        hw.wait_connected(10)
        assert self.c.send_time(device)
        b.wait_for(r"time set", 5)
        r = self.svc.set_tariff(device, tariff or TARIFFS[kind], wait=True)
        assert r.ok, (r.state, r.code, r.data)
        return b

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
        self.c.close()
        self.w.close()
        self.ingest.stop()
        self.svc.stop()
        self.ledger.close()


def make_site(broker, root) -> Site:
    return Site(broker, Path(root))


__all__ = ["Site", "make_site", "SimpleNamespace", "TARIFFS"]
