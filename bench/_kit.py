"""Shared set-up for benches that need a broker, a registry and simulated boards."""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker  # noqa: E402
from host_tools.cloud.commands import CommandClient  # noqa: E402
from host_tools.cloud.registry import Registry  # noqa: E402

CLOUD = ("cloud", "cloud-pw")


def broker() -> Broker:
    b = Broker(users={CLOUD[0]: CLOUD[1]}, cloud_users=(CLOUD[0],))
    b.start()
    return b


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgepay-bench-"))


def cloud(b: Broker, reg: Registry) -> CommandClient:
    return CommandClient(reg, BrokerSettings("127.0.0.1", b.cloud_port, *CLOUD)).connect()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def median(xs: list[float]) -> float:
    return statistics.median(xs)
