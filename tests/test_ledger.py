"""The ledger (host_tools/cloud/ledger.py): both backends, one behaviour."""
from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from host_tools.cloud.ledger import GENESIS, Head, Outcome, Record, SESSION_COLS, chain_hash
from host_tools.cloud.ledger_open import open_ledger
from host_tools.protocol import decode_payload, encode_payload, make_kid, build_mac0, topic


class DeviceChain:
    """A fake device's record stream: correctly signed, chained records made with the host codec."""

    def __init__(self, device: str, key: bytes | None = None, seq: int = 0):
        self.device = device
        self.key = key or os.urandom(32)
        self.kid = make_kid(device, 1)
        self.seq = seq
        self.prev = GENESIS
        self.topic = topic(device, "sess_open")
        self.sent: list[tuple[int, bytes]] = []   # (seq, envelope) in chain order

    def make(self, type_name: str, *, seq_step: int = 1, prev: bytes | None = None, key: bytes | None = None,
             kid: bytes | None = None, on_topic: str | None = None, advance: bool = True, **fields) -> tuple[int, bytes]:
        seq = self.seq + seq_step
        msg = {"type": type_name, "seq": seq, "prev": self.prev if prev is None else prev, **fields}
        t = on_topic or self.topic
        payload = encode_payload(msg, t if on_topic is None else None)
        raw = build_mac0(key or self.key, kid or self.kid, t, payload)
        if advance:
            self.seq, self.prev = seq, chain_hash(payload)
            self.sent.append((seq, raw))
        return seq, raw

    def session(self, sid: str, amount: int, cur: str = "EUR", updates: int = 1, t0: int = 1_700_000_000,
                payer: str = "payer-1") -> list[tuple[int, bytes]]:
        out = [self.make("sess_open", sid=sid, payer=payer, t0=t0, slot=1)]
        for i in range(updates):
            out.append(self.make("sess_update", sid=sid, amount=amount * (i + 1) // (updates + 1), cur=cur,
                                 t1=t0 + 60 * (i + 1)))
        out.append(self.make("sess_close", sid=sid, payer=payer, t0=t0, slot=1, amount=amount, cur=cur,
                             t1=t0 + 3600, lines=[["park", 1, amount]], reason="done"))
        return out

    def record(self, raw: bytes) -> Record:
        """The ledger Record of one of our envelopes (what the ingest worker makes after verifying)."""
        from host_tools.protocol import verify_mac0
        payload = verify_mac0(self.key, self.kid, self.topic, raw)
        return Record.from_message(self.device, decode_payload(payload, self.topic), payload, raw)

    def records(self, items) -> list[Record]:
        return [self.record(raw) for _, raw in items]


@pytest.fixture
def ledger(ledger_url):
    led = open_ledger(ledger_url)
    yield led
    led.close()


def test_first_record_commits_and_sets_the_head(ledger):
    d = DeviceChain("dev1")
    seq, raw = d.make("sess_open", sid="s1", payer="p", t0=100)
    res = ledger.commit(d.records([(seq, raw)]))
    assert [r.outcome for r in res.results] == [Outcome.COMMITTED]
    assert ledger.head("dev1") == Head(1, d.prev) == res.heads["dev1"]
    [rec] = ledger.records("dev1")
    assert rec.raw == raw and rec.prev == GENESIS and rec.hash == d.prev and rec.type == 6
    assert ledger.head("nobody") is None


def test_idempotent_by_device_and_seq(ledger):
    d = DeviceChain("dev1")
    items = d.session("s1", 250)
    assert ledger.commit(d.records(items)).count(Outcome.COMMITTED) == 3
    again = ledger.commit(d.records(items) + d.records(items[:1]))
    assert {r.outcome for r in again.results} == {Outcome.DUPLICATE}
    assert ledger.count() == 3 and ledger.head("dev1").seq == 3
    # duplicates inside one batch: stored once
    e = DeviceChain("dev2")
    items = e.session("s1", 10)
    res = ledger.commit(e.records(items + items))
    assert res.count(Outcome.COMMITTED) == 3 and res.count(Outcome.DUPLICATE) == 3
    assert ledger.count("dev2") == 3


def test_same_seq_other_bytes_is_a_conflict_never_overwritten(ledger):
    d = DeviceChain("dev1")
    seq, raw = d.make("sess_open", sid="s1", payer="p", t0=100)
    ledger.commit(d.records([(seq, raw)]))
    d2 = DeviceChain("dev1", key=d.key)  # same key, same seq 1, other content
    seq2, raw2 = d2.make("sess_open", sid="s1", payer="someone-else", t0=100)
    res = ledger.commit(d2.records([(seq2, raw2)]))
    assert [r.outcome for r in res.results] == [Outcome.CONFLICT]
    assert ledger.records("dev1")[0].raw == raw
    [rej] = ledger.rejects("dev1")
    assert rej["kind"] == "conflict" and rej["raw"] == raw2 and rej["seq"] == 1


def test_gap_is_not_committed_and_completes_later(ledger):
    d = DeviceChain("dev1")
    items = d.session("s1", 500, updates=2)  # seqs 1..4
    recs = d.records(items)
    res = ledger.commit([recs[0], recs[2], recs[3]])
    assert [(r.seq, r.outcome) for r in res.results] == [(1, Outcome.COMMITTED), (3, Outcome.GAP), (4, Outcome.GAP)]
    assert ledger.head("dev1").seq == 1 and ledger.count() == 1
    res = ledger.commit([recs[3], recs[1], recs[2]])  # any order inside a batch
    assert res.count(Outcome.COMMITTED) == 3 and ledger.head("dev1") == Head(4, d.prev)
    # a device whose first record is missing: nothing committed, no head
    e = DeviceChain("dev2")
    items = e.session("s1", 1)
    assert ledger.commit(e.records(items[1:])).count(Outcome.GAP) == 2
    assert ledger.head("dev2") is None and ledger.heads().keys() == {"dev1"}


def test_seq_gaps_are_allowed_when_the_chain_links(ledger):
    d = DeviceChain("dev1")
    a = d.make("sess_open", sid="s", payer="p", t0=1)
    b = d.make("sess_close", seq_step=17, sid="s", payer="p", t0=1, amount=5, cur="USD", t1=9)
    assert ledger.commit(d.records([a, b])).count(Outcome.COMMITTED) == 2
    assert ledger.head("dev1").seq == 18


def test_out_of_chain_records_are_refused(ledger):
    d = DeviceChain("dev1")
    items = d.session("s1", 100, updates=2)  # 1..4
    ledger.commit(d.records(items))
    # a fork: seq 5 linking to record 2 instead of the head
    rec2_hash = ledger.records("dev1")[1].hash
    fork = d.make("sess_update", sid="s1", amount=1, cur="EUR", t1=5, prev=rec2_hash, advance=False)
    # a second genesis record
    gen = d.make("sess_open", seq_step=2, sid="s2", payer="p", t0=5, prev=GENESIS, advance=False)
    # a seq below the head that was never in the chain (seq 3 never existed with these bytes? use a
    # new device chain that skipped seq 3: 1, 2, 4 and then sends 3)
    res = ledger.commit(d.records([fork, gen]))
    assert [r.outcome for r in res.results] == [Outcome.OUT_OF_CHAIN, Outcome.OUT_OF_CHAIN]
    e = DeviceChain("dev2")
    one = e.make("sess_open", sid="x", payer="p", t0=1)
    four = e.make("sess_update", seq_step=3, sid="x", amount=1, cur="EUR", t1=2)
    ledger.commit(e.records([one, four]))
    late = DeviceChain("dev2", key=e.key, seq=2)
    late.prev = ledger.records("dev2")[0].hash
    three = late.make("sess_update", sid="x", amount=2, cur="EUR", t1=3)
    res = ledger.commit(late.records([three]))
    assert [r.outcome for r in res.results] == [Outcome.OUT_OF_CHAIN]
    assert ledger.count() == 6 and {r["kind"] for r in ledger.rejects()} == {"out_of_chain"}
    assert ledger.head("dev1").seq == 4 and ledger.head("dev2").seq == 4


def test_batch_is_one_transaction(ledger):
    d = DeviceChain("dev1")
    recs = d.records(d.session("s1", 100))

    def boom():  # inside the write transaction, before its COMMIT
        raise RuntimeError("crash before commit")
    ledger._commit = boom
    with pytest.raises(RuntimeError):
        ledger.commit(recs)
    del ledger._commit  # the backend's own again
    assert ledger.count() == 0 and ledger.head("dev1") is None and ledger.sessions() == []
    assert ledger.commit(recs).count(Outcome.COMMITTED) == 3


def test_sessions_and_totals_are_integers(ledger):
    d = DeviceChain("dev1")
    e = DeviceChain("dev2")
    items = d.session("a", 1250) + d.session("b", 99, cur="USD") + e.session("c", 1)
    items_e = []
    open_only = d.make("sess_open", sid="d", payer="q", t0=5, amount=300, cur="EUR")
    upd = d.make("sess_update", sid="d", amount=400, cur="EUR", t1=6)
    ledger.commit(d.records(items[:6] + [open_only, upd]) + e.records(items[6:] + items_e))
    sessions = {(s.device, s.sid): s for s in ledger.sessions()}
    a = sessions[("dev1", "a")]
    assert (a.state, a.amount, a.currency, a.payer, a.lines, a.reason) == ("closed", 1250, "EUR", "payer-1",
                                                                           [["park", 1, 1250]], "done")
    assert (a.open_seq, a.close_seq, a.last_seq) == (1, 3, 3)
    dd = sessions[("dev1", "d")]
    assert (dd.state, dd.amount, dd.close_seq) == ("open", 400, None)
    assert [s.sid for s in ledger.sessions("dev2")] == ["c"]
    totals = ledger.totals()
    assert totals == {"EUR": 1251, "USD": 99} and all(type(v) is int for v in totals.values())
    assert ledger.totals("dev1") == {"EUR": 1250, "USD": 99}
    assert ledger.totals(state=None) == {"EUR": 1651, "USD": 99}
    assert ledger.totals(state="open") == {"EUR": 400}


def test_reconcile(ledger):
    d = DeviceChain("dev1")
    items = d.session("s1", 100, updates=2)  # 1..4
    ledger.commit(d.records(items[:3]))
    assert ledger.reconcile("dev1", items[:3]).ok
    rec = ledger.reconcile("dev1", items)
    assert (rec.missing, rec.extra, rec.mismatched) == ([4], [], [])
    other = DeviceChain("dev1", key=d.key)
    _, raw2 = other.make("sess_open", sid="zz", payer="p", t0=1)
    rec = ledger.reconcile("dev1", [(1, raw2)] + [{"seq": s, "raw": r} for s, r in items[2:]])
    assert (rec.missing, rec.extra, rec.mismatched) == ([4], [2], [1])
    # the device forgot what was acked: compare from its oldest record on
    assert ledger.reconcile("dev1", ledger.records("dev1")[2:], from_seq=3).ok


def _write_many(url, device, key, start, stop, results):
    """Commit records start..stop-1 of a deterministic chain, one batch each, from one Ledger."""
    led = open_ledger(url)
    d = DeviceChain(device, key=key)
    items = [d.make("sess_update", sid="s", amount=i, cur="EUR", t1=i) for i in range(stop)]
    recs = d.records(items)
    n = 0
    try:
        for i in range(start, stop):
            # always send the whole prefix up to i: a racing writer may have committed part of it
            n += led.commit(recs[max(0, i - 3):i + 1]).count(Outcome.COMMITTED)
    finally:
        led.close()
    results.append(n)


def _proc_entry(url, device, key, start, stop, q):
    out = []
    _write_many(url, device, key, start, stop, out)
    q.put(out[0])


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_concurrent_writers_keep_one_chain(ledger_url, how):
    """Two writers commit overlapping, partly racing batches of the same devices' chains: each
    record is committed exactly once and the head is the chain's last record."""
    key_a, key_b, n = os.urandom(32), os.urandom(32), 60
    led = open_ledger(ledger_url)  # create the schema first
    if how == "threads":
        results: list[int] = []
        ts = [threading.Thread(target=_write_many, args=(ledger_url, dev, key, 0, n, results))
              for dev, key in (("dev1", key_a), ("dev1", key_a), ("dev2", key_b), ("dev2", key_b))]
        [t.start() for t in ts]
        [t.join(120) for t in ts]
    else:
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_proc_entry, args=(ledger_url, dev, key, 0, n, q))
              for dev, key in (("dev1", key_a), ("dev1", key_a), ("dev2", key_b), ("dev2", key_b))]
        [p.start() for p in ps]
        results = [q.get(timeout=120) for _ in ps]
        [p.join(30) for p in ps]
    assert sum(results) == 2 * n
    for dev, key in (("dev1", key_a), ("dev2", key_b)):
        recs = led.records(dev)
        assert [r.seq for r in recs] == list(range(1, n + 1))
        prev = GENESIS
        for r in recs:
            assert r.prev == prev
            prev = r.hash
        assert led.head(dev) == Head(n, prev)
    assert led.rejects() == []
    led.close()


def test_open_ledger_urls(tmp_path):
    from host_tools.cloud.ledger_sqlite import SqliteLedger
    p = tmp_path / "x.db"
    for url in (str(p), f"sqlite:///{p}"):
        led = open_ledger(url)
        assert isinstance(led, SqliteLedger) and led.path == str(p)
        assert led._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        led.close()
    assert SESSION_COLS[0] == "device"


# ---- schema versions: the item column and the migration of an older database -------------------
V1_RECORDS = """CREATE TABLE records (
    device TEXT NOT NULL, seq {bigint} NOT NULL, type INTEGER NOT NULL, sid TEXT NOT NULL,
    payer TEXT, amount {bigint}, currency TEXT, t0 {bigint}, t1 {bigint}, slot {bigint},
    offline BOOLEAN, auth TEXT, reason TEXT, lines TEXT,
    hash {blob} NOT NULL, prev {blob} NOT NULL, raw {blob} NOT NULL,
    committed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq), UNIQUE (device, hash))"""


def _make_v1(url: str, rec: Record) -> None:
    """A ledger file as the first release wrote it: records without `item`, no version table."""
    if url.startswith("sqlite:///"):
        import sqlite3
        db = sqlite3.connect(url[len("sqlite:///"):])
        ph, types = "?", {"bigint": "INTEGER", "blob": "BLOB"}
    else:
        import psycopg
        db = psycopg.connect(url)
        ph, types = "%s", {"bigint": "BIGINT", "blob": "BYTEA"}
    cur = db.cursor()
    cur.execute(V1_RECORDS.format(**types))
    cur.execute("CREATE TABLE heads (device TEXT PRIMARY KEY, seq {bigint} NOT NULL, hash {blob} NOT NULL)"
                .format(**types))
    cur.execute(f"INSERT INTO heads (device, seq, hash) VALUES ({ph}, {ph}, {ph})", (rec.device, rec.seq, rec.hash))
    cols = ("device", "seq", "type", "sid", "payer", "t0", "hash", "prev", "raw", "committed_at")
    cur.execute(f"INSERT INTO records ({','.join(cols)}) VALUES ({','.join([ph] * len(cols))})",
                (rec.device, rec.seq, rec.type, rec.sid, rec.payer, rec.t0, rec.hash, rec.prev, rec.raw, 1.0))
    db.commit()
    db.close()


def test_item_is_stored_and_read_back(ledger):
    d = DeviceChain("rent-1")
    items = [d.make("sess_open", sid="r1", payer="card", t0=5, slot=2, item="TAG-7"),
             d.make("sess_open", sid="r2", payer="card", t0=6, slot=3)]
    ledger.commit(d.records(items))
    assert [r.item for r in ledger.records("rent-1")] == ["TAG-7", None]
    assert ledger.schema_version() == 3


def test_a_version_1_ledger_is_migrated_on_open(ledger_url):
    d = DeviceChain("rent-1")
    old = d.record(d.make("sess_open", sid="r1", payer="card", t0=5)[1])
    _make_v1(ledger_url, old)
    led = open_ledger(ledger_url)
    try:
        assert led.schema_version() == 3
        [r] = led.records("rent-1")
        assert (r.raw, r.item) == (old.raw, None)
        assert led.head("rent-1") == Head(old.seq, old.hash)   # the chain goes on from the old head
        new = d.make("sess_open", sid="r2", payer="card", t0=6, item="TAG-9")
        assert led.commit(d.records([new])).count(Outcome.COMMITTED) == 1
        assert [r.item for r in led.records("rent-1")] == [None, "TAG-9"]
    finally:
        led.close()
    again = open_ledger(ledger_url)          # opening a migrated ledger again changes nothing
    try:
        assert again.schema_version() == 3 and again.count() == 2
    finally:
        again.close()
