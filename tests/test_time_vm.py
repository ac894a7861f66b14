"""Freshness on the real MicroPython VM against a real Mosquitto (SPEC §5): commands bounded by the
device's TTL and never issued in its future, and time by challenge: the device asks with a nonce,
and only a signed answer that echoes it, within the round-trip bound, sets or steps its clock.
Here the test is the cloud's time responder by hand (it sees each verified time_req and answers,
or not, as each case needs); the last cases run the real one (host_tools/cloud/timeserver.py)."""
import os
import time

import cbor2
import pytest

from host_tools.cloud.commands import State
from host_tools.protocol import ERROR_NAMES, build_mac0, seal
from host_tools.protocol import topic as topic_for
from tests.agentkit import AgentRig

DEV = "dev1"
T_TIME = topic_for(DEV, "time")
DAY = 86400
TARIFF = {1: 1, 2: "CNY", 4: 60, 5: 100, 6: 4000, 7: 4000}  # 100 a minute, no free time


@pytest.fixture
def env(broker, tmp_path):
    rig = AgentRig(broker, tmp_path, start=True)
    rig.board = lambda **kw: AgentRig.board(rig, DEV, **kw)  # one device, booted at once
    yield rig
    rig.close()


def reboot_offline(b, hw, device):
    """Cut the network, then the power while it is down, and boot again with no way to the cloud
    (so no time): returns the log index the new boot's lines start from."""
    n = len(b.lines)
    b.proxy.partition(3600)
    b.wait_for(r"mqtt down", 20, start=n)
    hellos = hw.hellos
    b.kill()                                     # a power cut while the network is down
    b.restart()
    hw.wait_connected(15, after=hellos)
    b.wait_for(rf"agent {device} boot", 15, start=n)
    time.sleep(1.0)
    return n


def next_req(env, timeout=10.0):
    """The device's next time_req (verified by the host codec): its nonce."""
    _, m, _ = env.w.expect(lambda t, m, r: t == f"v1/dev/{DEV}/up/time", timeout, "time_req")
    assert m["type"] == "time_req" and len(m["nonce"]) == 8, m
    return m["nonce"]


def answer(env, nonce, t=None, key=None):
    """A signed time answer echoing `nonce` (the cloud's time `t`, now by default); sent, and returned."""
    dev = env.reg.get(DEV)
    msg = {"type": "time", "aud": DEV, "iat": int(time.time() if t is None else t),
           "seq": env.reg.next_seq(DEV), "nonce": nonce}
    data = seal(key or dev.key, dev.kid, T_TIME, msg)
    env.c.mqtt.publish(T_TIME, data, qos=0, timeout=None)
    return data


def trusted(env, b):
    n = len(b.lines)
    answer(env, next_req(env))
    return int(b.wait_for(r"time set (\d+)", 5, start=n).group(1))


def command(env, *, iat, exp, name="display", args=None):
    """A hand-signed command with the given iat and exp; its result code."""
    dev = env.reg.get(DEV)
    t = topic_for(DEV, "command")
    cti = os.urandom(12)
    msg = {"type": "command", "aud": DEV, "exp": exp, "iat": iat, "cti": cti, "seq": env.reg.next_seq(DEV),
           "name": name, "args": args or {1: "X"}}
    env.c.mqtt.publish(t, seal(dev.key, dev.kid, t, msg), qos=1)
    _, m, _ = env.w.expect(lambda tp, m, r: tp.endswith("/up/res") and m.get("cti") == cti, 10, "result")
    return ERROR_NAMES[m["status"]]


# --- TTL and iat ------------------------------------------------------------------------------
def test_command_lifetime_is_bounded_by_the_device_ttl(env):
    b = env.board()
    trusted(env, b)
    now = int(time.time())
    # signed to live for years: refused, whatever its exp; nothing actuates
    assert command(env, iat=now, exp=now + 3 * 365 * DAY, args={1: "years"}) == "ttl_exceeded"
    assert command(env, iat=now, exp=now + 601, args={1: "601"}) == "ttl_exceeded"
    assert command(env, iat=now, exp=now + 600, args={1: "600"}) == "ok"  # cmd_ttl_s 600: at the bound
    # held in a queue: issued long ago with a short life is expired (exp passed), not ttl_exceeded
    assert command(env, iat=now - 3 * DAY, exp=now - 3 * DAY + 60, args={1: "held"}) == "expired"
    # the bound is a setting: the cloud may widen it (signed set_config), within 10 s .. 7 days
    assert env.c.send(DEV, "set_config", {"cmd_ttl_s": 3600}).ok
    assert command(env, iat=now, exp=now + 3600, args={1: "hour"}) == "ok"
    assert env.c.send(DEV, "set_config", {"cmd_ttl_s": 5}).code == "bad_args"
    time.sleep(0.3)
    log = b.log()
    assert "ACT display '600'" in log and "ACT display 'hour'" in log
    assert not any(f"ACT display '{x}'" in log for x in ("years", "601", "held"))


def test_command_issued_in_the_device_future_is_refused(env):
    b = env.board()
    trusted(env, b)
    now = int(time.time())
    assert command(env, iat=now + 60, exp=now + 120, args={1: "skew"}) == "ok"  # within clock_skew_s 120
    assert command(env, iat=now + 600, exp=now + 900, args={1: "ahead"}) == "future_iat"
    time.sleep(0.3)
    assert "ACT display 'skew'" in b.log() and "ACT display 'ahead'" not in b.log()


def test_ttl_is_checked_before_the_clock_is_trusted_too(env):
    env.board()
    next_req(env)  # never answered: the clock stays untrusted
    now = int(time.time())
    assert command(env, iat=now, exp=now + 30 * DAY, name="get_state", args={}) == "ttl_exceeded"
    assert command(env, iat=now, exp=now + 60, name="get_state", args={}) == "ok"
    assert command(env, iat=now, exp=now + 60) == "clock_untrusted"


# --- time by challenge ----------------------------------------------------------------------------
def test_answer_to_the_outstanding_nonce_sets_the_clock(env):
    b = env.board()
    t = trusted(env, b)
    assert abs(t - time.time()) <= 2
    assert env.c.send(DEV, "get_state").data["clock"] == 1


def test_unsolicited_wrong_nonce_replayed_and_stale_answers_are_refused(env):
    b = env.board()
    first = next_req(env)
    dev = env.reg.get(DEV)
    # an old-style beacon (no nonce, as every beacon before v1 time-by-challenge): missing
    n = len(b.lines)
    beacon = cbor2.dumps({0: 22, 3: DEV, 6: int(time.time()) + DAY, 8: env.reg.next_seq(DEV)})
    env.c.mqtt.publish(T_TIME, build_mac0(dev.key, dev.kid, T_TIME, beacon), qos=1)
    b.wait_for(r"dn refused v1/dev/dev1/dn/time missing", 5, start=n)
    answer(env, os.urandom(8))                          # a nonce the device never sent
    b.wait_for(r"time refused nonce", 5, start=n)
    answer(env, first, key=os.urandom(32))              # its nonce, signed with another key
    b.wait_for(r"dn refused v1/dev/dev1/dn/time bad_mac", 5, start=n)
    second = next_req(env)                              # it asks again (2 s later): a new nonce
    assert second != first
    n = len(b.lines)
    answer(env, first)                                  # stale: the answer to the earlier request
    b.wait_for(r"time refused nonce", 5, start=n)
    assert "time set" not in b.log()
    ok = answer(env, second)
    b.wait_for(r"time set", 5, start=n)
    n = len(b.lines)
    env.c.mqtt.publish(T_TIME, ok, qos=0)               # replayed: a nonce is good once
    b.wait_for(r"time refused nonce", 5, start=n)


def test_answer_after_the_round_trip_bound_is_refused(env):
    b = env.board()
    next_req(env)
    next_req(env)        # asks at connect, +2 s, +6 s, +14 s while untrusted:
    nonce = next_req(env)  # the third leaves 8 s before the next
    time.sleep(5.5)      # the round trip bound is 5 s: this answer's time could be 5 s stale
    n = len(b.lines)
    answer(env, nonce)
    b.wait_for(r"time refused rtt", 5, start=n)
    assert "time set" not in b.log()


def test_answer_to_a_nonce_lost_in_a_reboot_is_refused_and_the_clock_is_untrusted(env):
    b = env.board()
    trusted(env, b)
    assert env.c.send(DEV, "sync_time").ok             # it asks now (the command moves nothing)
    held = next_req(env)
    b.kill()                                           # power cut before our answer
    b.restart()
    n = len(b.lines)
    fresh = next_req(env)                              # at connect, with a new nonce
    assert fresh != held
    answer(env, held)                                  # the answer to the lost nonce comes late
    b.wait_for(r"time refused nonce", 5, start=n)
    # nothing persisted moves the clock: untrusted until an exchange succeeds
    assert env.c.send(DEV, "get_state").data["clock"] == 0
    assert env.c.send(DEV, "display", {1: "after reboot"}).code == "clock_untrusted"
    answer(env, next_req(env))
    b.wait_for(r"time set", 5, start=n)
    assert env.c.send(DEV, "display", {1: "after reboot"}).state is State.SUCCEEDED


def test_signed_answers_step_the_clock_forward_and_back(env):
    b = env.board(settings={"time_s": 5})
    trusted(env, b)
    n = len(b.lines)
    future = int(time.time()) + 10 * DAY
    answer(env, next_req(env), future)                 # a cloud host with a clock 10 days ahead
    assert int(b.wait_for(r"time set (\d+)", 8, start=n).group(1)) - future in (0, 1)
    n = len(b.lines)
    past = int(time.time()) - 10 * DAY
    answer(env, next_req(env), past)                   # and then 10 days behind: back as well
    assert int(b.wait_for(r"time set (\d+)", 8, start=n).group(1)) - past in (0, 1)
    now = int(time.time())
    assert command(env, iat=now, exp=now + 60) == "future_iat"  # the cloud's now is in its future


def test_a_bad_time_is_recovered_at_the_next_exchange(env):
    """The real responder (TimeServer) with a clock a year ahead, then right: the device follows."""
    b = env.board(settings={"time_s": 5})
    ts = env.c.serve_time()
    ts.skew[DEV] = 365 * DAY
    t = int(b.wait_for(r"time set (\d+)", 10).group(1))
    assert t > time.time() + 364 * DAY
    r = env.c.send(DEV, "display", {1: "a year on"})   # signed with the real time: long expired there
    assert r.state is State.EXPIRED and r.code == "expired"
    ts.skew[DEV] = 0
    n = len(b.lines)
    t = int(b.wait_for(r"time set (\d+)", 10, start=n).group(1))  # its next request, time_s later
    assert abs(t - time.time()) <= 2
    assert env.c.send(DEV, "display", {1: "recovered"}).state is State.SUCCEEDED
    assert ts.refused == 0 and ts.count(DEV) >= 2


def test_sync_time_and_the_responder(env):
    """CommandClient.sync_time: the device asks now, the client's TimeServer answers."""
    b = env.board()
    next_req(env)                                     # its own first request, unanswered
    assert env.c.send(DEV, "display", {1: "x"}).code == "clock_untrusted"
    assert env.c.sync_time(DEV)
    b.wait_for(r"time set", 5)
    assert env.c.send(DEV, "get_state").data["clock"] == 1


# --- no trusted time after a reboot: the gate (SPEC §5, "without trusted time") ---------------------
def test_gate_without_trusted_time_lets_a_car_out_and_the_cloud_prices_the_stay(site):
    """A reboot with the network down: the clock is untrusted. The gate starts no stay it cannot
    time, still lets a parked car out (offline, within the policy), records the stay as unmeasured
    (reason untimed, amount 0, t1 = t0), and the cloud prices it once it has the record."""
    from host_tools.cloud import fees
    dev = "gate-nt"
    b = site.board(dev, "gate", TARIFF, proxy=True)
    hw = b.hw
    site.svc.bind("NT1", "acct-nt1")
    assert site.cmd(dev, "set_policy", {1: 1, 2: "CNY", 3: 5000, 4: 9000, 5: 3, 6: 86400}).ok
    assert site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["NT1", 5000], ["NT2", 5000]]}).ok

    def through(lane, plate, expect=None):
        n = len(b.lines)
        hw.set_input(f"{lane}_loop", 1)
        b.wait_for(rf"FSM {lane} car -> plate", 10, start=n)
        hw.scan(f"{lane}_camera", plate)
        if expect:
            m = b.wait_for(expect, 20, start=n)
            hw.set_input(f"{lane}_loop", 0)
            return m
        hw.wait_output(f"{lane}_barrier", "open", 20)
        hw.set_input(f"{lane}_loop", 0)
        hw.wait_output(f"{lane}_barrier", "closed", 10)

    through("entry", "NT1")                      # in, online, with trusted time
    opened = site.wait_records(dev, 1)[0]
    n = reboot_offline(b, hw, "gate-nt")
    assert "time set" not in "\n".join(b.lines[n:])
    through("entry", "NT2", expect=r"ACT display 'Sorry: no entry now'")  # a stay it cannot time
    assert hw.output("entry_barrier") == "closed"
    through("exit", "NT1")                       # but the parked car gets out
    assert "billed later" in "\n".join(b.lines[n:])
    n = len(b.lines)
    healed = int(time.time())
    b.proxy.heal()
    b.wait_for(r"time set", 30, start=n)
    close = site.wait_records(dev, 2, 30)[-1]
    assert close.type == 8 and close.reason == "untimed" and close.offline
    assert close.amount == 0 and close.t1 == close.t0 == opened.t0
    assert "NT2" not in {r.payer for r in site.records(dev)}
    deadline = time.monotonic() + 20
    while site.svc.settle_status(dev, close.sid)["status"] not in ("settled", "settled_flagged"):
        assert time.monotonic() < deadline, site.svc.settle_status(dev, close.sid)
        time.sleep(0.2)
    st = site.svc.settle_status(dev, close.sid)
    assert "untimed" in st["flags"] and "fee_mismatch" not in st["flags"]
    # priced by the cloud from the entry to when it had the record: between the heal and now
    assert st["cloud_amount"] in {fees.parking(TARIFF, opened.t0, t) for t in range(healed, int(time.time()) + 2)}
    assert st["cloud_amount"] > 0 and st["charged"] == st["cloud_amount"]


def test_rental_without_trusted_time_takes_the_item_back_and_the_cloud_prices_it(site):
    """The rental station the same way: no rental starts untimed; a return is taken (the item is
    back, its slot locks), recorded untimed (amount 0, t1 = t0) and priced by the cloud."""
    from host_tools.cloud import fees
    dev = "rent-nt"
    tariff = {1: 1, 2: "CNY", 4: 60, 5: 100, 6: 4000, 9: 9900}  # 100 a minute
    b = site.board(dev, "rental", tariff, proxy=True)
    hw = b.hw
    site.svc.bind("RN1", "acct-rn1")
    for i in range(8):
        hw.set_input(f"slots.{i}", 1)
    hw.scan("qr", "RN1")                         # rented online, with trusted time
    hw.wait_output("locks.0", "unlocked", 10)
    hw.set_input("slots.0", 0)
    hw.wait_output("locks.0", "locked", 5)
    opened = site.wait_records(dev, 1)[0]
    n = reboot_offline(b, hw, "rent-nt")
    hw.scan("qr", "RN2")                         # a rental it cannot time: refused
    b.wait_for(r"ACT display 'Sorry: no rental now'", 10, start=n)
    assert hw.output("locks.1") == "locked"
    hw.scan("rfid", f"{dev}-item0")              # the item comes back
    time.sleep(0.2)
    hw.set_input("slots.0", 1)
    b.wait_for(r"FSM slot0 returned -> stocked", 10, start=n)
    n = len(b.lines)
    healed = int(time.time())
    b.proxy.heal()
    b.wait_for(r"time set", 30, start=n)
    close = site.wait_records(dev, 2, 30)[-1]
    assert close.type == 8 and close.reason == "untimed" and close.amount == 0
    assert close.t1 == close.t0 == opened.t0 and close.sid == opened.sid
    deadline = time.monotonic() + 20
    while site.svc.settle_status(dev, close.sid)["status"] not in ("settled", "settled_flagged"):
        assert time.monotonic() < deadline, site.svc.settle_status(dev, close.sid)
        time.sleep(0.2)
    st = site.svc.settle_status(dev, close.sid)
    assert "untimed" in st["flags"] and "fee_mismatch" not in st["flags"]
    assert st["cloud_amount"] in {fees.rental(tariff, opened.t0, t)[0] for t in range(healed, int(time.time()) + 2)}
    assert st["cloud_amount"] > 0 and st["charged"] == st["cloud_amount"]
