"""A device given several broker addresses (config "broker": {"brokers": [[host, port], ...]},
firmware/config.py, firmware/mqtt_client.py) tries them in turn, on the real VM with two real
Mosquitto brokers: a refused address moves it to the next at once, and when the broker it is on
dies it reconnects to the other. The single-address config ({"host", "port"}) is unchanged."""
import json
import time

import pytest

from host_tools.broker import Broker, free_port
from host_tools.cloud.commands import State
from host_tools.cloud.registry import Registry
from host_tools.provision import broker_section
from host_tools.sim.provision import FAST, provision_sim
from tests.agentkit import Watcher, cloud
from tests.conftest import USERS


@pytest.fixture
def other():
    """A second broker, apart from the `broker` fixture's: same users, its own ports."""
    b = Broker(users=dict(USERS), cloud_users=("cloud",))
    b.start()
    yield b
    b.close()


@pytest.fixture
def reg():
    return Registry()


def _online(w, device, timeout):
    return w.expect(lambda t, m, r: t == f"v1/dev/{device}/up/status" and m.get("online") is True,
                    timeout, f"{device} online")


def _device(reg, tmp_path, device, first, addrs, *also):
    """Provision `device` on broker `first` with these addresses; its password on `also` too."""
    b = provision_sim(first, reg, tmp_path, device, brokers=addrs)
    cfg = json.loads((b.dir / "config.json").read_text())
    assert cfg["broker"] == {"brokers": [list(a) for a in addrs], "password": cfg["broker"]["password"]}
    for br in also:
        br.add_user(device, cfg["broker"]["password"])
    return b


def test_a_refused_address_moves_on_to_the_next_at_once(other, reg, tmp_path):
    dead = free_port()  # nothing listens there: the connection is refused
    w = Watcher(other, reg)
    b = _device(reg, tmp_path, "dev-a", other, [("127.0.0.1", dead), ("127.0.0.1", other.port)])
    try:
        t0 = time.monotonic()
        b.start()
        _online(w, "dev-a", 15)
        took = time.monotonic() - t0
        b.wait_for(r"mqtt up", 5)
        # no backoff between the two addresses: boot plus one refused connect plus one that works
        assert took < 8, took
        c = cloud(other, reg)
        try:
            assert c.sync_time("dev-a")
            assert c.send("dev-a", "display", {1: "on the second"}, timeout=10).state is State.SUCCEEDED
        finally:
            c.close()
    finally:
        b.kill()
        w.close()


def test_when_its_broker_dies_it_reconnects_to_the_other(broker, other, reg, tmp_path):
    wa, wb = Watcher(broker, reg), Watcher(other, reg)
    b = _device(reg, tmp_path, "dev-b", broker, [("127.0.0.1", broker.port), ("127.0.0.1", other.port)], other)
    try:
        b.start()
        _online(wa, "dev-b", 15)  # the first address first
        mark = len(b.lines)
        broker.kill()
        t0 = time.monotonic()
        _online(wb, "dev-b", 15)
        took = time.monotonic() - t0
        b.wait_for(r"mqtt up", 5, start=mark)
        # one backoff (<= backoff_max, full jitter), the dead address refused, then the other
        assert took < FAST["backoff_max_ms"] / 1000 + 4, took
        c = cloud(other, reg)
        try:
            assert c.sync_time("dev-b")
            assert c.send("dev-b", "display", {1: "moved"}, timeout=10).state is State.SUCCEEDED
        finally:
            c.close()
        # and back: the other dies too while the first is up again
        broker.start()
        mark = len(b.lines)
        other.kill()
        b.wait_for(r"mqtt up", 15, start=mark)
    finally:
        b.kill()
        wa.close()
        wb.close()


# (id, the config's broker section, what the device says at boot): refused with exit 3, never run
LIST = "'brokers' must be 1..4 [host, port] and no 'host'/'port'"
BAD = [
    ("too-many", {"brokers": [["127.0.0.1", 1000 + i] for i in range(5)]}, LIST),
    ("empty", {"brokers": []}, LIST),
    ("not-a-list", {"brokers": "127.0.0.1:1883"}, LIST),
    ("both", {"brokers": [["127.0.0.1", 1883]], "host": "127.0.0.1", "port": 1883}, LIST),
    ("bad-port", {"brokers": [["127.0.0.1", 1883], ["127.0.0.1", 70000]]}, LIST),
    ("port-as-text", {"brokers": [["127.0.0.1", "1883"]]}, LIST),
    ("port-as-bool", {"brokers": [["127.0.0.1", True]]}, LIST),
    ("no-host", {"brokers": [["", 1883]]}, LIST),
    ("a-triple", {"brokers": [["127.0.0.1", 1883, 1]]}, LIST),
    ("an-object", {"brokers": [{"host": "127.0.0.1", "port": 1883}]}, LIST),
    ("neither", {}, "missing 'host'"),
]


@pytest.mark.parametrize("cid,section,want", BAD, ids=[c[0] for c in BAD])
def test_a_bad_broker_list_stops_at_boot(broker, reg, tmp_path, cid, section, want):
    b = provision_sim(broker, reg, tmp_path, f"dev-{cid}")
    cfg = json.loads((b.dir / "config.json").read_text())
    cfg["broker"] = dict(section, password=cfg["broker"]["password"])
    b.write_config(cfg)
    b.start()
    assert b.wait(10) == 3 and b.exit_reason() == "config"
    assert f"config error: config.json broker: {want}" in b.log(), b.log()
    assert "mqtt up" not in b.log()


def test_host_writes_one_address_as_before_and_bounds_the_list():
    assert broker_section([("10.0.0.2", 1883)], "pw") == {"host": "10.0.0.2", "port": 1883, "password": "pw"}
    assert broker_section([("a", 1), ("b", 2)], "pw") == {"brokers": [["a", 1], ["b", 2]], "password": "pw"}
    for n in (0, 5):
        with pytest.raises(ValueError, match="1..4 broker addresses"):
            broker_section([("a", 1)] * n, "pw")


def test_provision_takes_the_device_broker_option_repeated(tmp_path):
    from tests.test_cli import bad, run
    common = ["--broker-dir", str(tmp_path / "b")]
    run("--registry", str(tmp_path / "r.db"), "provision", "gate-1", "--board", "esp32-devkitc-gate",
        "--out", str(tmp_path / "g1"), *common, "--device-broker", "10.0.0.2:1883")
    cfg = json.loads((tmp_path / "g1" / "config.json").read_text())
    assert cfg["broker"]["host"] == "10.0.0.2" and cfg["broker"]["port"] == 1883 and "brokers" not in cfg["broker"]
    out = json.loads(run("--json", "--registry", str(tmp_path / "r.db"), "provision", "gate-2", "--board",
                         "esp32-devkitc-gate", "--out", str(tmp_path / "g2"), *common,
                         "--device-broker", "10.0.0.2:1883", "--device-broker", "10.0.0.3:1884").output)
    cfg = json.loads((tmp_path / "g2" / "config.json").read_text())
    assert cfg["broker"]["brokers"] == [["10.0.0.2", 1883], ["10.0.0.3", 1884]] and "host" not in cfg["broker"]
    assert out["brokers"] == ["10.0.0.2:1883", "10.0.0.3:1884"]
    five = [a for i in range(5) for a in ("--device-broker", f"10.0.0.{i + 2}:1883")]
    bad("--registry", str(tmp_path / "r.db"), "provision", "gate-3", "--board", "esp32-devkitc-gate",
        "--out", str(tmp_path / "g3"), *common, *five, code=2, says="at most 4")
    assert not (tmp_path / "g3").exists()
