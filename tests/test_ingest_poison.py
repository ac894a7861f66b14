"""One device's signed record never stops another's (SPEC §6 Quarantine), on SQLite and PostgreSQL.

The poison: a record signed with the device's own key (a stolen key, or a device bug) that the
cloud cannot commit: an amount of 2^63 (a valid CBOR uint that no signed 64-bit column holds, now
refused by the codec: `bad_value`), a seq of 2^64-1 (cannot even be placed in the chain), or a
record that passes the codec but that the database refuses (a trigger here: "a DB error specific to
that record"). Each is kept byte for byte in `quarantine`, alarmed, and - when it has a place in the
chain - acked with its seq in `quarantined`, so the device's next record still links.
"""
# ruff: noqa: F811  (the fixtures env, db_url, ledger are imported from their modules)
from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import pytest

from host_tools.cloud.ledger import GENESIS, Outcome
from host_tools.protocol import build_mac0, encode
from tests.test_ingest import FakeDevice, db_url, env, wait_for  # noqa: F401
from tests.test_ledger import DeviceChain, chain_hash, ledger  # noqa: F401

T0 = 1_700_000_000


PAYLOAD_HASH: dict[bytes, bytes] = {}   # poison envelope -> its chain hash


def poison(chain: DeviceChain, amount: int = 1 << 63, seq: int | None = None, sid: str = "px") -> tuple[int, bytes]:
    """A sess_update the device signs and chains like any record, but with an amount no codec may
    accept: built past the host codec's checks (encode + build_mac0). Advances the chain (the
    device's next record links to it) but is not in `chain.sent` (not for the records table).
    With `seq` (say 2^64-1) it links to genesis and leaves the chain alone."""
    s = chain.seq + 1 if seq is None else seq
    prev = chain.prev if seq is None else GENESIS
    payload = encode({0: 7, 8: s, 9: prev, 10: sid, 16: amount, 17: "EUR", 18: T0 + 60})
    raw = build_mac0(chain.key, chain.kid, chain.topic, payload)
    PAYLOAD_HASH[raw] = chain_hash(payload)
    if seq is None:
        chain.seq, chain.prev = s, chain_hash(payload)
    return s, raw


def add_trigger(ledger, payer: str = "poison") -> None:
    """A database rule that refuses one record's row: it passes the codec, fails at commit."""
    if ledger.placeholder == "?":
        ledger._db.execute(f"CREATE TRIGGER poison_row BEFORE INSERT ON records WHEN NEW.payer = '{payer}' "
                           "BEGIN SELECT RAISE(ABORT, 'poison row'); END")
    else:
        with ledger._db.cursor() as cur:
            cur.execute("CREATE FUNCTION poison_row() RETURNS trigger AS $$ BEGIN "
                        f"IF NEW.payer = '{payer}' THEN RAISE EXCEPTION 'poison row' USING ERRCODE = 'check_violation'; "
                        "END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            cur.execute("CREATE TRIGGER poison_row BEFORE INSERT ON records FOR EACH ROW "
                        "EXECUTE FUNCTION poison_row()")
        ledger._db.commit()


# ---- the ledger alone ----------------------------------------------------------------------------
def test_a_record_that_fails_its_commit_is_quarantined_and_the_batch_goes_on(ledger):
    """The bug itself, past the codec: amount 2^63 in a Record. SQLite raised OverflowError and
    the whole batch failed; now only that record is isolated."""
    bad, good = DeviceChain("evil"), [DeviceChain(f"g{i}") for i in range(3)]
    recs = [r for d in good for r in d.records(d.session("s1", 100))]
    first = bad.records([bad.make("sess_open", sid="px", payer="p", t0=T0)])[0]
    raw = bad.make("sess_update", sid="px", amount=5, cur="EUR", t1=T0 + 1)
    over = dataclasses.replace(bad.record(raw[1]), amount=1 << 63)
    after = bad.records([bad.make("sess_close", sid="px", payer="p", t0=T0, amount=5, cur="EUR", t1=T0 + 2)])[0]
    res = ledger.commit(recs + [first, over, after])
    by = {(r.device, r.seq): r for r in res.results}
    assert all(by[(r.device, r.seq)].outcome is Outcome.COMMITTED for r in recs + [first, after])
    assert by[("evil", 2)].outcome is Outcome.QUARANTINED and by[("evil", 2)].detail == "commit_error"
    for d in good:
        assert [(r.seq, r.raw) for r in ledger.records(d.device)] == d.sent
    [q] = ledger.quarantined("evil")
    assert (q["seq"], q["reason"], q["raw"]) == (2, "commit_error", raw[1])
    assert "Overflow" in q["detail"] or "range" in q["detail"] or "int" in q["detail"].lower(), q["detail"]
    # the head passed the quarantined record; the chain goes on from it
    assert ledger.head("evil").seq == 3 and [r.seq for r in ledger.records("evil")] == [1, 3]
    nxt = bad.records([bad.make("sess_open", sid="p2", payer="p", t0=T0 + 9)])
    assert ledger.commit(nxt).count(Outcome.COMMITTED) == 1


def test_a_nul_in_a_text_field_is_quarantined_where_the_database_refuses_it(ledger):
    """A payer with a NUL character is valid UTF-8 and passes both codecs; SQLite stores it,
    PostgreSQL refuses it in a TEXT column (DataError): a poison of the backend's own making."""
    d, other = DeviceChain("dev1"), DeviceChain("dev2")
    nul = d.records([d.make("sess_open", sid="s", payer="a\x00b", t0=T0)])
    nxt = d.records([d.make("sess_close", sid="s", payer="p", t0=T0, amount=1, cur="EUR", t1=T0 + 1)])
    fine = other.records(other.session("s", 5))
    res = ledger.commit(nul + nxt + fine)
    want = Outcome.COMMITTED if ledger.placeholder == "?" else Outcome.QUARANTINED
    assert [(r.device, r.seq, r.outcome) for r in res.results if r.device == "dev1"] == [
        ("dev1", 1, want), ("dev1", 2, Outcome.COMMITTED)]
    assert ledger.count("dev2") == 3 and ledger.head("dev1").seq == 2
    assert [q["seq"] for q in ledger.quarantined()] == ([] if want is Outcome.COMMITTED else [1])


def test_a_codec_refused_record_takes_its_place_in_the_chain(ledger):
    d = DeviceChain("dev1")
    ledger.commit(d.records([d.make("sess_open", sid="s", payer="p", t0=T0)]))
    seq, raw = d.make("sess_update", sid="s", amount=7, cur="EUR", t1=T0 + 1)
    q = dataclasses.replace(d.record(raw), quarantine="bad_value", quarantine_detail="amount out of range")
    assert [r.outcome for r in ledger.commit([q]).results] == [Outcome.QUARANTINED]
    assert [r.outcome for r in ledger.commit([q]).results] == [Outcome.QUARANTINED_DUPLICATE]
    other = dataclasses.replace(q, raw=raw + b"x")
    assert [r.outcome for r in ledger.commit([other]).results] == [Outcome.CONFLICT]
    assert ledger.head("dev1").seq == seq and ledger.count("dev1") == 1
    assert [x["seq"] for x in ledger.quarantined("dev1")] == [seq]
    # unplaceable: kept once per distinct envelope
    assert ledger.quarantine_unplaced("dev1", b"\x01\x02", "bad_value", "seq 2^64-1")
    assert not ledger.quarantine_unplaced("dev1", b"\x01\x02", "bad_value", "seq 2^64-1")
    assert [x["seq"] for x in ledger.quarantined("dev1")] == [seq, None]


def test_a_database_refusing_every_device_quarantines_nothing(ledger):
    """When every device of a batch fails, the database is at fault, not a record: the error is
    raised (the devices resend) and nothing is quarantined or acked."""
    add_trigger(ledger, payer="p")
    devs = [DeviceChain(f"d{i}") for i in range(3)]
    recs = [d.records([d.make("sess_open", sid="s", payer="p", t0=T0)])[0] for d in devs]
    with pytest.raises(Exception):
        ledger.commit(recs)
    assert ledger.quarantined() == [] and ledger.count() == 0


# ---- the ingest worker with a real broker --------------------------------------------------------
class TimedDevice(FakeDevice):
    """A FakeDevice that notes, per record, the time from publishing to the ack that covers it."""

    def __init__(self, *a, **kw):
        self.sent_at: dict[int, float] = {}
        self.latency: list[float] = []
        super().__init__(*a, **kw)

    def send(self, items, publish=True, retain=False):
        now = time.monotonic()
        for seq, _ in items:
            self.sent_at.setdefault(seq, now)
        super().send(items, publish, retain)

    def _on_ack(self, client, userdata, m):
        before = set(self.unacked)
        super()._on_ack(client, userdata, m)
        now = time.monotonic()
        for s in before - set(self.unacked):
            self.latency.append(now - self.sent_at[s])


def _stream(env, names, sessions):
    """Each device streams `sessions` sessions (3 records each), a few records at a time; -> the
    devices once every record is acked."""
    devs = []
    for n in names:
        env.broker.add_user(n, f"{n}-pw")
        d = TimedDevice(env.broker, env.registry, n, f"{n}-pw", checker=env.checker)
        env.devices.append(d)
        devs.append(d)
    for k in range(sessions):
        for d in devs:
            d.send(d.chain.session(f"s{k}", 100 + k))
        time.sleep(0.02)
    wait_for(lambda: all(d.all_acked() for d in devs), timeout=60, tick=lambda: [d.retry() for d in devs],
             every=3.0, what="every good record acked")
    return devs


def _streaming(env, name, poisonous):
    """A device that streams three messages every 10 ms until stopped: with `poisonous`, a new
    chained poison record (3 in 4 times; else a good record linking to it), the first poison again
    and one of three unplaceable ones (seq 2^64-1); without, the same shape of load made of good
    records and their duplicates. -> (device, stop event, thread, poison sent)."""
    env.broker.add_user(name, f"{name}-pw")
    dev = TimedDevice(env.broker, env.registry, name, f"{name}-pw", checker=env.checker)
    env.devices.append(dev)
    stop = threading.Event()
    poisoned: list[tuple[int, bytes]] = []
    c = dev.chain
    unplaceable = [poison(c, seq=(1 << 64) - 1, sid=f"u{k}")[1] for k in range(3)]

    def run():
        k = 0
        while not stop.is_set():
            if k % 4 == 3 or not poisonous:
                dev.send([c.make("sess_open", sid=f"e{k}", payer="p", t0=T0)])
            else:
                item = poison(c, sid=f"x{k}")
                poisoned.append(item)
                dev.send([item])
            dev.publish_raw(poisoned[0][1] if poisonous else c.sent[0][1])   # the same again
            dev.publish_raw(unplaceable[k % 3] if poisonous else c.sent[-1][1])
            k += 1
            time.sleep(0.01)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return dev, stop, t, poisoned


def _under(env, name, poisonous, devices):
    dev, stop, t, poisoned = _streaming(env, name, poisonous)
    try:
        time.sleep(0.3)
        good = _stream(env, devices, sessions=6)
    finally:
        stop.set()
        t.join(5)
    wait_for(dev.all_acked, timeout=30, tick=dev.retry, every=2.0, what=f"{name}'s stream acked")
    return good, dev, poisoned


def test_poison_stream_does_not_delay_ten_other_devices(env):
    w = env.worker(hold_ms=200)
    # baseline: ten devices streaming sessions while an 11th streams good records at the rate
    # the poison comes later (so the comparison is poison against no poison, not load against none)
    # the same again while "evil" streams poison; twice each, interleaved, against drift and noise
    base, hit, evils = [], [], []
    for r in range(2):
        base += _under(env, f"calm{r}", False, [f"a{r}x{i}" for i in range(10)])[0]
        good, evil, poisoned = _under(env, f"evil{r}", True, [f"b{r}x{i}" for i in range(10)])
        hit += good
        evils.append((evil, poisoned))

    # nothing of the good devices is lost or doubled, and their latency is normal
    for d in base + hit:
        assert [(r.seq, r.raw) for r in env.checker.records(d.id)] == d.chain.sent
        assert not d.violations
    p50 = [statistics.median(x for d in ds for x in d.latency) for ds in (base, hit)]
    p95 = [statistics.quantiles([x for d in ds for x in d.latency], n=20)[-1] for ds in (base, hit)]
    ratio50, ratio95 = p50[1] / p50[0], p95[1] / p95[0]
    print(f"good-device ack latency p50 {p50[0] * 1e3:.1f} -> {p50[1] * 1e3:.1f} ms (x{ratio50:.2f}), "
          f"p95 {p95[0] * 1e3:.1f} -> {p95[1] * 1e3:.1f} ms (x{ratio95:.2f}); "
          f"poison sent {[len(p) for _, p in evils]}")
    # before quarantine the poison failed every batch: no ack at all while it kept coming
    assert ratio50 < 3 and ratio95 < 4, (p50, p95)  # measured x0.8-1.7 and x0.6-2.5 on 2 busy cores

    for evil, poisoned in evils:
        # the poison is kept, not dropped: every chained one placed, the unplaceable ones once each
        q = env.checker.quarantined(evil.id)
        placed = {x["seq"]: x["raw"] for x in q if x["seq"] is not None}
        assert placed == dict(poisoned)
        assert {x["reason"] for x in q} == {"bad_value"}
        assert sum(x["seq"] is None for x in q) == 3
        # evil got signed acks listing its quarantined seqs, and the ack moved past them
        listed = {s for a in evil.acks for s in a.get("quarantined", ())}
        assert {s for s, _ in poisoned} <= listed
        assert all(s <= a["upto"] for a in evil.acks for s in a.get("quarantined", ()))
        assert evil.upto == evil.chain.seq and not evil.violations
        # its good records commit, each linking to what came before it (poison included)
        goods = env.checker.records(evil.id)
        assert [(r.seq, r.raw) for r in goods] == evil.chain.sent and goods
        hashes = {r.seq: r.hash for r in goods}
        hashes.update({s: PAYLOAD_HASH[raw] for s, raw in poisoned})
        for r in goods:
            assert r.prev == (hashes[r.seq - 1] if r.seq > 1 else GENESIS)
        assert env.checker.head(evil.id).seq == evil.chain.seq
    s = w.stats
    assert s["quarantined"] == sum(len(p) + 3 for _, p in evils) and s["quarantine_repeats"] > 0
    assert {a["kind"] for a in w.alarms} == {"quarantined"}
    assert env.checker.quarantined("calm0") == env.checker.quarantined("calm1") == []


def test_a_record_the_database_refuses_is_isolated_and_quarantined(env):
    """Defense in depth: a record that passes the codec but fails at commit (a trigger refuses
    its row) is retried alone and quarantined; the batch and every other device go on."""
    add_trigger(env.checker)
    w = env.worker(batch_ms=30)   # large batches: the poison shares them with the others
    devs = [env.device(f"dev{i}") for i in range(1, 4)]
    bad = env.device("evil")
    for k in range(4):
        for d in devs:
            d.send(d.chain.session(f"s{k}", 10 + k))
    first = bad.chain.make("sess_open", sid="px", payer="poison", t0=T0)
    bad.chain.sent.remove(first)  # not for the records table (the device's checker knows)
    bad.send([first])
    rest = bad.chain.session("ok", 50)
    bad.send(rest)
    wait_for(lambda: all(d.all_acked() for d in devs + [bad]), timeout=30,
             tick=lambda: [d.retry() for d in devs + [bad]], every=2.0, what="all acked")
    for d in devs:
        assert [(r.seq, r.raw) for r in env.checker.records(d.id)] == d.chain.sent
    [q] = env.checker.quarantined("evil")
    assert (q["seq"], q["raw"], q["reason"]) == (1, first[1], "commit_error") and "poison row" in q["detail"]
    assert [(r.seq, r.raw) for r in env.checker.records("evil")] == rest
    assert any(1 in a.get("quarantined", ()) for a in bad.acks)
    assert w.stats["quarantined"] == 1 and w.stats["errors"] == 0
    assert not any(d.violations for d in devs + [bad])


def test_ack_quarantined_round_trips_in_the_host_codec():
    from host_tools.protocol import open_message, seal, topic
    key, t = bytes(32), topic("dev1", "ack")
    raw = seal(key, "dev1:1", t, {"type": "ack", "aud": "dev1", "iat": T0, "seq": 3, "upto": 9,
                                  "quarantined": [7, 9]})
    assert open_message(key, "dev1:1", t, raw)["quarantined"] == [7, 9]
    from host_tools.protocol import ProtocolError
    with pytest.raises(ProtocolError) as e:
        seal(key, "dev1:1", t, {"type": "ack", "aud": "dev1", "iat": T0, "seq": 3, "upto": 9,
                                "quarantined": list(range(17))})
    assert e.value.code == "bad_value"


# ---- the device (MicroPython VM) -----------------------------------------------------------------
def test_device_forgets_a_quarantined_record_and_raises_the_alarm(site):
    """A gate's staff `open` is journaled as a record the ledger refuses (a trigger on its payer):
    the cloud quarantines it and acks with `quarantined`; the device forgets it (journal empty)
    and raises `record_quarantined` once, and its next record still commits on the chain."""
    site.board("gate-q1", "gate")
    add_trigger(site.ledger, payer="staff")
    r = site.cmd("gate-q1", "open", {1: 0, 3: 1})
    assert r.ok, (r.code, r.data)
    _, alarm, _ = site.w.expect(lambda t, m, _r: m.get("type") == "alarm"
                                and m.get("code") == "record_quarantined", what="record_quarantined alarm")
    [q] = site.ledger.quarantined("gate-q1")
    assert q["reason"] == "commit_error" and alarm["active"] is True
    assert alarm["detail"] == {"seqs": [q["seq"]]}
    state = site.cmd("gate-q1", "get_state")
    assert state.ok and state.data["jdepth"] == 0, state.data
    # the chain goes on past the quarantined record: a customer's session commits
    site.ledger._db.execute("DROP TRIGGER poison_row")
    assert site.cmd("gate-q1", "open", {1: 1, 3: 1}).ok
    [rec] = site.wait_records("gate-q1", 1)
    assert rec.seq > q["seq"] and site.ledger.head("gate-q1").seq == rec.seq
    assert sum(1 for _t, m, _r in site.w.all if m.get("code") == "record_quarantined") == 1


def test_a_revoked_devices_records_are_kept_in_quarantine_never_as_money(env):
    """issue 15 §3: what a revoked device journaled before it was cut off and still sends is kept,
    raw, for audit (quarantine `device_revoked`, acked so it is not resent), never taken as money;
    every other device goes on."""
    env.worker(batch_ms=5, key_cache_s=0)   # sees the registry's status at once
    calm, stolen = env.device("calm"), env.device("stolen")
    first = stolen.chain.session("a", 100)
    stolen.send(first)
    wait_for(stolen.all_acked, what="before the theft")
    env.registry.set_status("stolen", "revoked")
    late = stolen.chain.session("b", 900)
    for seq, raw in late:
        stolen.chain.sent.remove((seq, raw))   # not for the records table: for quarantine
    stolen.send(late)
    calm.send(calm.chain.session("c", 5))
    wait_for(lambda: calm.all_acked() and stolen.all_acked(), what="all acked")
    assert [(r.seq, r.raw) for r in env.checker.records("stolen")] == first
    q = env.checker.quarantined("stolen")
    assert [(x["seq"], x["raw"], x["reason"]) for x in q] == [(s, raw, "device_revoked") for s, raw in late]
    assert [(r.seq, r.raw) for r in env.checker.records("calm")] == calm.chain.sent
    assert env.checker.totals() == {"EUR": 100 + 5}   # the stolen device's late session is no money
    assert not calm.violations and not stolen.violations
