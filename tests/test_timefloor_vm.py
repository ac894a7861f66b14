"""The TLS time floor (issue 15 §2, SPEC §5): a board whose RTC a power cut left in 2000 cannot check
the broker certificate's dates, and one whose network reaches the broker but no NTP server would
never connect again. Before each TLS connect the device sets an RTC below its floor, the latest of
the trusted time it kept on flash and its firmware's build time (clock.BUILT), to the floor; the
payment clock stays untrusted until the signed exchange. On the VM the unix port's clock is the
host's, so a board is given an RTC of its own (file .rtc in its directory, hal/sim.py) and the set
is recorded there and in the log line "rtc floor T", which comes before the link is up. Each board
connects over TLS to a real Mosquitto that checks nothing of the device but its password."""
import re
import time
from pathlib import Path

import pytest

from host_tools.broker import Broker
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from host_tools.tls import write_pki
from tests.agentkit import CLOUD, provision

Y2000 = 946684800
DAY = 86400


def built() -> int:
    src = (Path(__file__).resolve().parent.parent / "firmware" / "clock.py").read_text()
    return int(re.search(r"^BUILT = const\((\d+)\)", src, re.M).group(1))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    pki = write_pki(tmp_path_factory.mktemp("pki"))
    b = Broker(users={"cloud": "cloud-pw"}, tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]})
    b.start()
    yield b, pki
    b.close()


def _board(tls_broker, reg, tmp_path, device, rtc=None):
    broker, pki = tls_broker
    b = provision(broker, reg, tmp_path, device, ca_file=pki["ca"],
                  settings={"backoff_min_ms": 100, "backoff_max_ms": 300})
    if rtc is not None:
        (b.dir / ".rtc").write_text(str(rtc))
    return b


def _online(b, timeout=20):
    b.wait_for(r"\bonline\b", timeout)
    return b.log()


def _rtc(b):
    return int((b.dir / ".rtc").read_text())


def test_a_cold_board_sets_its_rtc_to_the_floor_before_the_tls_connect(tls_broker, tmp_path):
    # the floor is max(last trusted time kept, build time): with none kept, the build time (one
    # kept is the floor of the next boot in the test below)
    floor = built()
    reg = Registry()
    b = _board(tls_broker, reg, tmp_path, "tf1", rtc=Y2000).start()
    try:
        log = _online(b)
        assert _rtc(b) == floor
        lines = log.splitlines()
        set_at = next(i for i, ln in enumerate(lines) if f"rtc floor {floor}" in ln)
        up_at = next(i for i, ln in enumerate(lines) if "mqtt up" in ln)
        assert set_at < up_at, log  # before the (first) TLS connect, which then succeeds
        assert sum("rtc floor" in ln for ln in lines) == 1, log  # the RTC runs on from the floor
    finally:
        b.kill()


@pytest.mark.parametrize("rtc", [None, "past"])
def test_a_floor_never_moves_a_clock_already_past_it(tls_broker, tmp_path, rtc):
    # None: the host's clock (no RTC of its own); "past": an RTC ahead of both floors
    ahead = built() + 100 * DAY
    reg = Registry()
    b = _board(tls_broker, reg, tmp_path, "tf2", rtc=None if rtc is None else ahead).start()
    try:
        log = _online(b)
        assert "rtc floor" not in log, log
        if rtc is not None:
            assert _rtc(b) == ahead
    finally:
        b.kill()


def test_the_trusted_time_is_kept_when_it_becomes_trusted_then_at_most_once_a_day(tls_broker, tmp_path):
    broker, _ = tls_broker
    reg = Registry()
    now = [built() + 2 * DAY]  # the cloud's time, what the signed answers carry
    b = _board(tls_broker, reg, tmp_path, "tf3", rtc=Y2000).start()
    c = CommandClient(reg, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD), clock=lambda: now[0]).connect()

    def kept():
        return b.state("tfloor")

    try:
        _online(b)
        assert kept() is None  # untrusted: nothing is kept, and nothing kept moved the clock
        assert c.sync_time("tf3")
        b.wait_for(r"time set", 10)
        _wait(lambda: kept() == now[0])  # the moment it is trusted
        first = now[0]
        ts = c.serve_time()

        def step(s):  # the answer steps the device's clock s on (the command's time is the old one)
            ts.skew["tf3"] = s
            n = b.log().count("time set")
            assert c.sync_time("tf3")
            _wait(lambda: b.log().count("time set") > n)
            now[0] += s
            ts.skew["tf3"] = 0

        for s in (3600, DAY - 3600 - 60):  # within a day of the last one kept: not written
            step(s)
            assert kept() == first
        step(60)  # a day on: kept again
        _wait(lambda: kept() == first + DAY)
    finally:
        c.close()
        b.kill()
    # the next cold boot takes the kept time as its floor, and the link comes back over TLS
    (b.dir / ".rtc").write_text(str(Y2000))
    n = len(b.lines)
    b.start()
    try:
        b.wait_for(r"\bonline\b", 20, start=n)
        log = b.log()
        assert f"rtc floor {first + DAY}" in log, log
        assert _rtc(b) == first + DAY
    finally:
        b.kill()


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
