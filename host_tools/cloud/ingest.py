"""The ingest worker: session records from devices into the ledger, then the signed ack (SPEC §6).

    w = IngestWorker(registry, ledger, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "pw")).start()
    ...; w.stats; w.stop()

    python -m host_tools.cloud.ingest --port 18830 --password-env EDGEPAY_MQTT_PW \
        --registry /var/lib/edgepay/registry.db --db postgresql://...

Pipeline. The broker engine decides how workers in one group split the stream
(host_tools/cloud/record_feed.py): on Mosquitto an MQTT 5 connection (CloudMQTT: TCP_NODELAY,
resubscribe on reconnect) holds the shared subscription `$share/<group>/v1/dev/+/up/rec`; on the
NATS cluster the group shares a durable JetStream pull consumer on a replicated stream
(host_tools/cloud/jetstream.py), each message acknowledged to the stream only once its record is
committed (or terminated if poison, redelivered if its worker dies). The network thread only queues
(topic, bytes, retain, token); the worker thread takes a batch (up to
`batch_max` messages, or whatever arrived within `batch_ms` of the first), and for each message:
- verifies it: the topic is some device's up/rec, the device is in the registry, the envelope, kid
  (that device's current kid) and MAC (topic as AAD), the payload schema (host codec,
  `verify_mac0` + `decode_payload` = `open_message`), the type is a record (6-8). The retain
  flag is ignored (a retained copy is just one more duplicate). A refused message is counted
  under its SPEC §7 code in `stats["refused"]`, logged, and never reaches the ledger;
- hands the batch to `Ledger.commit` (one transaction, per-device head locked; see ledger.py),
  which deduplicates by (device, seq) and checks the hash chain. "device" there is the record's
  chain: the device id, or DEVICE~R for the records of a fresh board a re-provisioning to key
  version R put under that id (host_tools/cloud/chains.py: its seq starts from 1 again, so it is
  a chain of its own); acks go to the device whatever the chain.

Quarantine (SPEC §6): a record whose MAC verifies but whose payload the codec refuses (a field
out of its bounds, say) is the device's own, signed: it is not dropped but quarantined. With a
usable seq and prev it goes to the ledger as a quarantined Record, takes its place in the chain
and is acked (the ack lists it in `quarantined`); without, it is kept unplaced
(`Ledger.quarantine_unplaced`). A record that passes the codec but fails its commit is isolated
by the ledger and quarantined the same way (`commit_error`), so the batch and every other device
go on. Each new quarantine is counted (`stats["quarantined"]`), logged and put in `alarms`
(kind `quarantined`); the rows are in `Ledger.quarantined()`. An authenticated message of a
non-record type on up/rec is not money: refused `bad_topic`, not quarantined.

After the commit returns - never before - every device with a committed or duplicate record
in the batch gets one cumulative ack {upto: its head seq} (QoS 1, signed with the device's key,
seq from registry.next_seq). A duplicate is acked again because the device may have missed the
last ack. A seq already stored with other bytes, or a record off the chain (a fork), is refused:
counted, logged at ERROR, kept in the ledger's `rejects` table, and put in `alarms`.

`on_commit` (optional): called on the worker thread with the records newly COMMITTED by a batch
(not duplicates), in (device, seq) order, after the commit and after the acks; an exception in it
is counted under `errors` and logged, and changes nothing in the ledger. The session service
(host_tools/cloud/sessions.py) settles sess_close records this way. A consumer that must not miss
records across its own restarts polls the ledger as well (SessionService.settle_ledger).

Out of order (a design choice): with a shared subscription a device's records are spread over
workers, so a record regularly reaches the ledger before its predecessor that another worker is
committing at the same moment. A record that does not link (GAP) is therefore held in memory and
retried with every batch and every `retry_ms`, for up to `hold_ms`; only a record still unlinked
after that triggers a resend request {upto: head, resend: true}, at most one per device per
`resend_interval_s`. Held records are then dropped (bounded by `hold_max` per device): the device
resends everything unacknowledged, so nothing is lost by dropping. With `hold_ms=0` a gap asks
for a resend at once. On the NATS cluster a held record's stream message stays unacknowledged while
it is held, and one dropped (or never held) is delivered again by the stream (a nak), so a record
does not need the device's resend to reach the ledger.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable

from host_tools.cloud.chains import Epochs, chain_id, device_of, route
from host_tools.cloud.ingest_quarantine import Revoked, Unplaceable, quarantine_record
from host_tools.cloud.ledger import Head, Ledger, Outcome, Record
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings, BrokerUnsupported
from host_tools.cloud.record_feed import record_feed
from host_tools.cloud.registry import CompromisedKey, Device, Registry, RegistryError
from host_tools.protocol import ProtocolError, decode_payload, parse_topic, seal
from host_tools.protocol import topic as topic_for

log = logging.getLogger("edgepay.ingest")

RECORD_FILTER = "v1/dev/+/up/rec"
RECORD_TYPE_NAMES = ("sess_open", "sess_update", "sess_close")


class IngestWorker:
    """One ingest worker (see the module doc): start() subscribes and runs the worker thread;
    stats, alarms; stop() commits and acks what was queued, then disconnects."""

    def __init__(self, registry: Registry, ledger: Ledger, broker: BrokerSettings, group: str | None = "ingest", batch_max: int = 500, batch_ms: float = 5.0,
                 hold_ms: float = 500.0, retry_ms: float = 20.0, resend_interval_s: float = 2.0,
                 hold_max: int = 2000,
                 on_alarm: Callable[[dict], None] | None = None, key_cache_s: float = 30.0,
                 on_commit: Callable[[list[Record]], None] | None = None, feed_options: dict | None = None):
        self.registry = registry
        self.ledger = ledger
        self.group = group
        self.batch_max = max(1, int(batch_max))
        self.batch_s = max(0.0, batch_ms / 1000.0)
        self.hold_s = max(0.0, hold_ms / 1000.0)
        self.retry_s = max(0.001, retry_ms / 1000.0)
        self.resend_interval_s = resend_interval_s
        self.hold_max = hold_max
        self.key_cache_s = key_cache_s
        self.on_alarm = on_alarm
        self.on_commit = on_commit
        # group None: a plain (non-shared) subscription, e.g. an auditor that sees every copy. The
        # engine decides how a group shares the records: Mosquitto a $share subscription, NATS a
        # durable JetStream consumer (record_feed.py). Its thread only queues
        # (topic, payload, retain, token): the retain flag is kept (the ledger ignores it, stats
        # count it), the token is settled once the record is committed, refused or held no more.
        self._q: queue.Queue = queue.Queue()
        self._feed = record_feed(broker, group, RECORD_FILTER, self._q.put, **(feed_options or {}))
        self.subscription = self._feed.subscription
        self._held_tokens: dict[tuple[str, int], list] = {}   # (device, seq) held -> its unsettled tokens
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keys: dict[str, tuple[Device, float]] = {}
        self._epochs = Epochs(registry)   # R of each re-provisioned device (chains.py)
        self._held: dict[str, dict[int, tuple[Record, float]]] = {}
        self._last_resend: dict[str, float] = {}
        self._unplaced: dict[bytes, None] = {}   # digests of unplaceable records kept (bounded)
        self._stats_lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "received": 0, "retained": 0, "verified": 0, "committed": 0, "duplicates": 0,
            "conflicts": 0, "out_of_chain": 0, "gaps": 0, "held": 0, "resend_requests": 0,
            "acks": 0, "batches": 0, "refused": collections.Counter(), "errors": 0,
            "quarantined": 0, "quarantine_repeats": 0, "terminated": 0,
        }
        self.alarms: collections.deque = collections.deque(maxlen=1000)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "IngestWorker":
        self._feed.start(timeout)
        self._thread = threading.Thread(target=self._run, name=f"ingest-{self.group or 'plain'}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, commit and ack what was queued, disconnect."""
        self._feed.stop_taking()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._feed.close()

    def connected(self) -> bool:
        return self._feed.connected()

    @property
    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            s = dict(self._stats)
            s["refused"] = dict(self._stats["refused"])
            s["held_now"] = sum(len(h) for h in self._held.values())
            s["queued"] = self._q.qsize()
        counts = getattr(self._feed, "counts", None)   # the cluster's stream: acked, terminated, redelivered
        if counts is not None:
            s["stream"] = counts()
        return s

    def _count(self, key: str, n: int = 1) -> None:
        if n:
            with self._stats_lock:
                self._stats[key] += n

    # ---- the worker thread -------------------------------------------------------------
    def _run(self) -> None:
        next_retry = time.monotonic() + self.retry_s
        while True:
            stopping = self._stop.is_set()
            batch = self._take(0.0 if stopping else min(self.retry_s, 0.05))
            if stopping and not batch and not self._held:
                return
            now = time.monotonic()
            retry = now >= next_retry or stopping
            if retry:
                next_retry = now + self.retry_s
            if batch or (retry and self._held):
                try:
                    self._settle(self._process(batch, retry_all=retry))
                except Exception:  # noqa: BLE001 - a worker must survive a bad batch
                    # nothing of this batch was acked: the devices send it again, the stream too
                    self._settle([(item[3], "nak") for item in batch])
                    self._count("errors")
                    log.exception("ingest batch failed; its records will be resent by the devices")
                    time.sleep(0.2)
            if stopping and not batch:
                # held records cannot complete once we stop taking messages: ask for a resend
                self._expire_held(force=True)
                return

    def _take(self, wait: float) -> list[tuple]:
        try:
            first = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_s
        while len(batch) < self.batch_max:
            try:
                batch.append(self._q.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._q.get(timeout=left))
            except queue.Empty:
                break
        return batch

    # ---- verification -------------------------------------------------------------------
    def _device(self, device_id: str, fresh: bool = False) -> Device:
        now = time.monotonic()
        hit = self._keys.get(device_id)
        if hit is not None and not fresh and now - hit[1] < self.key_cache_s:
            return hit[0]
        dev = self.registry.get(device_id)
        self._keys[device_id] = (dev, now)
        return dev

    def _epoch(self, dev: Device) -> int | None:
        return self._epochs.get(dev.device_id, dev.key_version)

    def _routed(self, rec: Record, compromised: bool = False) -> Record:
        """The record with its chain as its ledger device (host_tools/cloud/chains.py)."""
        dev = self._device(rec.device)
        epoch = self._epoch(dev)
        if epoch is None:
            return rec
        chain = route(self.ledger, rec.device, epoch, rec, compromised)
        return rec if chain == rec.device else dataclasses.replace(rec, device=chain)

    def verify(self, topic: str, data: bytes) -> Record:
        """Check one message (raises ProtocolError / RegistryError); the ledger Record, one with
        `quarantine` set if the MAC verifies but the codec refuses the payload (Unplaceable, a
        ProtocolError, if it has no usable seq/prev). Its device is its chain (chains.py)."""
        device_id, suffix = parse_topic(topic)
        if suffix != "up/rec":
            raise ProtocolError("bad_topic", f"not a record topic: {topic}")
        dev = self._device(device_id)
        try:  # under the key the envelope's kid names (SPEC §11: current, next, or retired below its switch)
            payload, now_dev = self.registry.verify_uplink(dev, topic, data)
        except ProtocolError as e:
            if isinstance(e, CompromisedKey):  # re-provisioned: a record under the stolen key, never money
                self._device(device_id, fresh=True)  # its ack goes under the new key
                return self._routed(quarantine_record(device_id, e.payload, data, e), compromised=True)
            if e.code not in ("bad_kid", "bad_mac"):
                raise
            fresh = self._device(device_id, fresh=True)  # the key may have been rotated
            if (fresh.key, fresh.kid) == (dev.key, dev.kid):
                raise
            payload, now_dev = self.registry.verify_uplink(fresh, topic, data)
        if now_dev is not dev:  # its key changed (a rotation's switch): cache it as it now is
            self._keys[device_id] = (now_dev, time.monotonic())
            dev = now_dev
        try:
            msg = decode_payload(payload, topic)
        except ProtocolError as e:  # authenticated, but the codec refuses it: quarantine
            return self._routed(quarantine_record(device_id, payload, data, e))
        if msg["type"] not in RECORD_TYPE_NAMES:  # the topic check already implies it
            raise ProtocolError("bad_topic", f"{msg['type']} is not a record")
        if not dev.active:  # revoked: its records are kept for audit, never taken as money
            return self._routed(quarantine_record(device_id, payload, data, Revoked(dev.status)))
        return self._routed(Record.from_message(device_id, msg, payload, data))

    def _refuse(self, code: str, topic: str, detail: str) -> None:
        with self._stats_lock:
            self._stats["refused"][code] += 1
        log.warning("refused a record on %s: %s %s", topic, code, detail)

    def _alarm(self, kind: str, device: str, seq: int, detail: str) -> None:
        a = {"kind": kind, "device": device, "seq": seq, "detail": detail, "at": time.time()}
        self.alarms.append(a)
        log.error("ledger alarm: %s device=%s seq=%s %s", kind, device, seq, detail)
        if self.on_alarm is not None:
            try:
                self.on_alarm(a)
            except Exception:  # noqa: BLE001
                log.exception("on_alarm callback failed")

    # ---- settling the feed's tokens --------------------------------------------------------
    def _settle(self, verdicts: list[tuple[Any, str]]) -> None:
        """Tell the feed what became of each message (a no-op on MQTT): "ack" once committed (or a
        duplicate, quarantined, or handed back to the device with a resend request), "term" for a
        poison message, "nak" for one to deliver again."""
        todo = [(t, v) for t, v in verdicts if t is not None]
        if todo:
            self._count("terminated", sum(1 for _, v in todo if v == "term"))
            self._feed.settle(todo)

    def _release(self, dev: str, seq: int, verdict: str, out: list) -> None:
        out.extend((t, verdict) for t in self._held_tokens.pop((dev, seq), ()))

    # ---- one batch ----------------------------------------------------------------------
    def _process(self, batch: list[tuple], retry_all: bool) -> list[tuple[Any, str]]:
        """Verify, commit and ack one batch; each message's (token, verdict) for the feed."""
        records: list[Record] = []
        verdicts: list[tuple[Any, str]] = []
        pending: list[tuple[Any, tuple[str, int]]] = []   # tokens decided by their record's outcome
        for topic, data, retained, token in batch:
            self._count("received")
            if retained:
                self._count("retained")
            try:
                rec = self.verify(topic, data)
                records.append(rec)
                pending.append((token, (rec.device, rec.seq)))
                if rec.quarantine:
                    self._refuse(rec.quarantine, topic, rec.quarantine_detail)
            except Unplaceable as e:
                self._refuse(e.code, topic, e.detail)
                verdicts.append((token, "ack" if self._quarantine_unplaced(e) else "nak"))
            except ProtocolError as e:
                self._refuse(e.code, topic, e.detail)
                verdicts.append((token, "term"))
            except RegistryError as e:
                self._refuse("unknown_device", topic, str(e))
                verdicts.append((token, "term"))
        self._count("verified", len(records))
        # held records: retried with every batch of their device, and all of them on each tick
        devices = {r.device for r in records}
        for dev in list(self._held):
            if retry_all or dev in devices:
                records.extend(r for r, _ in self._held[dev].values())
        if not records:
            return verdicts
        result = self.ledger.commit(records)            # one transaction, committed on return
        self._count("batches")
        now = time.monotonic()
        by_key = {(r.device, r.seq): r for r in records}
        ack: dict[str, Head] = {}
        quarantined: dict[str, list[int]] = {}
        committed: list[Record] = []
        outcome: dict[tuple[str, int], Outcome] = {}
        for res in result.results:
            dev, seq = res.device, res.seq
            outcome[(dev, seq)] = res.outcome
            if res.outcome is not Outcome.GAP:
                held = self._held.get(dev)
                if held is not None and held.pop(seq, None) is not None:
                    self._release(dev, seq, "ack", verdicts)
                    if not held:
                        del self._held[dev]
            if res.outcome is Outcome.COMMITTED:
                self._count("committed")
                committed.append(by_key[(dev, seq)])
            elif res.outcome is Outcome.DUPLICATE:
                self._count("duplicates")
            elif res.outcome is Outcome.QUARANTINED:
                self._count("quarantined")
                self._alarm("quarantined", dev, seq, res.detail)
                quarantined.setdefault(dev, []).append(seq)
            elif res.outcome is Outcome.QUARANTINED_DUPLICATE:
                self._count("quarantine_repeats")
                quarantined.setdefault(dev, []).append(seq)
            elif res.outcome is Outcome.CONFLICT:
                self._count("conflicts")
                self._alarm("conflict", dev, seq, res.detail)
                continue
            elif res.outcome is Outcome.OUT_OF_CHAIN:
                self._count("out_of_chain")
                self._alarm("out_of_chain", dev, seq, res.detail)
                continue
            else:  # GAP
                held = self._held.setdefault(dev, {})
                if seq not in held:
                    self._count("gaps")
                    if len(held) < self.hold_max:
                        held[seq] = (by_key[(dev, seq)], now)
                        self._count("held")
                if not held:
                    del self._held[dev]
                    self._request_resend(dev, result.heads.get(dev))
                continue
            head = result.heads.get(dev)
            if head is not None and self._board_chain(dev, result.heads):
                ack[dev] = head
        # this batch's messages: kept unsettled while held (a dead worker's are redelivered) and
        # delivered again if they could not be held, a conflict or a fork is poison, everything
        # else is the ledger's now
        for token, key in pending:
            o = outcome.get(key)
            if o is Outcome.GAP and key[1] in self._held.get(key[0], {}):
                if token is not None:
                    self._held_tokens.setdefault(key, []).append(token)
                    self._feed.park([token])
            elif o is Outcome.GAP:
                verdicts.append((token, "nak"))
            else:
                verdicts.append((token, "term" if o in (Outcome.CONFLICT, Outcome.OUT_OF_CHAIN) else "ack"))
        # the transaction is committed: now, and only now, acknowledge
        for dev, head in ack.items():
            # at most 16 quarantined seqs an ack (SPEC §6): more go ahead in acks of their own,
            # each with upto just below the next one listed
            qs = sorted(set(quarantined.get(dev, ())))
            while len(qs) > 16:
                chunk, qs = qs[:16], qs[16:]
                self._send_ack(dev, min(head.seq, qs[0] - 1), resend=False, quarantined=chunk)
            self._send_ack(dev, head.seq, resend=False, quarantined=qs)
        if committed and self.on_commit is not None:
            try:  # after the commit and the acks: a slow consumer never delays an ack
                self.on_commit(sorted(committed, key=lambda r: (r.device, r.seq)))
            except Exception:  # noqa: BLE001 - the records are committed whatever it does
                self._count("errors")
                log.exception("on_commit callback failed")
        self._expire_held(heads=result.heads, settled=verdicts)
        return verdicts

    def _expire_held(self, heads: dict[str, Head | None] | None = None, force: bool = False,
                     settled: list | None = None) -> None:
        now = time.monotonic()
        out: list = [] if settled is None else settled
        for dev in list(self._held):
            held = self._held[dev]
            if force or any(now - t >= self.hold_s for _, t in held.values()):
                del self._held[dev]
                # the device is asked to resend them, and the stream delivers its copies again
                # (a nak: to any worker, by when their predecessors have likely been committed)
                for seq in held:
                    self._release(dev, seq, "nak", out)
                head = (heads or {}).get(dev) if heads and dev in heads else self.ledger.head(dev)
                self._request_resend(dev, head)
        if settled is None:
            self._settle(out)

    def _board_chain(self, chain: str, heads: dict[str, Head | None] | None = None) -> bool:
        """Is `chain` the one of the board that holds the device id now? Only that board is acked
        or asked to resend: an ack of an older board's chain (a compromised-key record quarantined
        after a fresh board took the id) would carry a seq of the other chain, and the board
        would forget records of its own it never had acknowledged."""
        device = device_of(chain)
        try:
            epoch = self._epoch(self._device(device))
        except RegistryError:
            return True
        new = chain_id(device, epoch)
        if epoch is None or chain == new:
            return True
        h = heads[new] if heads is not None and new in heads else self.ledger.head(new)
        return h is None

    def _request_resend(self, dev: str, head: Head | None) -> None:
        if not self._board_chain(dev):
            return  # an older board's chain: nobody to ask (chains.py)
        now = time.monotonic()
        last = self._last_resend.get(dev)
        if last is not None and now - last < self.resend_interval_s:
            return  # rate limit: the device is resending already
        self._last_resend[dev] = now
        self._count("resend_requests")
        log.info("chain gap for %s after seq %s: asking for a resend", dev, head.seq if head else 0)
        self._send_ack(dev, head.seq if head else 0, resend=True)

    def _quarantine_unplaced(self, e: Unplaceable) -> bool:
        """Keep it (True: kept, now or before)."""
        digest = hashlib.sha256(e.raw).digest()
        if digest in self._unplaced:  # kept already: a repeat costs no write transaction
            self._count("quarantine_repeats")
            return True
        try:
            new = self.ledger.quarantine_unplaced(e.device, e.raw, e.code, e.detail)
        except Exception:  # noqa: BLE001 - it comes again; the other records go on
            self._count("errors")
            log.exception("could not keep an unplaceable record of %s", e.device)
            return False
        self._unplaced[digest] = None
        while len(self._unplaced) > 10000:
            del self._unplaced[next(iter(self._unplaced))]
        if new:  # the same bytes again are kept once and alarmed once
            self._count("quarantined")
            self._alarm("quarantined", e.device, -1, f"unplaceable: {e.code} {e.detail}")
        else:
            self._count("quarantine_repeats")
        return True

    def _send_ack(self, chain: str, upto: int, resend: bool, quarantined: list[int] | None = None) -> None:
        dev = device_of(chain)  # a chain DEVICE~R is that device's board: upto is in its seq space
        try:
            d = self._device(dev)
            t = topic_for(dev, "ack")
            msg: dict[str, Any] = {"type": "ack", "aud": dev, "iat": int(time.time()),
                                   "seq": self.registry.next_seq(dev), "upto": upto}
            if resend:
                msg["resend"] = True
            if quarantined:
                msg["quarantined"] = quarantined
            self._feed.publish(t, seal(d.key, d.kid, t, msg))
            self._count("acks")
        except Exception:  # noqa: BLE001 - the device will resend and be acked then
            self._count("errors")
            log.exception("could not ack %s upto %s", dev, upto)


# ---- command line -----------------------------------------------------------------------
def run_worker(registry: str, db: str, host: str = "127.0.0.1", port: int = 1884, username: str = "cloud",
               password: str = "", group: str = "ingest", batch_max: int = 500, batch_ms: float = 5.0,
               hold_ms: float = 500.0, stop: threading.Event | None = None, stats_every_s: float = 0.0,
               out=None, engine: str = "mosquitto", servers: tuple[str, ...] = (),
               feed_options: dict | None = None) -> dict:
    """Run one worker until `stop` is set or SIGTERM/SIGINT; print `ready` when subscribed and
    the final stats as JSON. Returns the stats."""
    out = out or sys.stdout
    reg = Registry(registry)
    ledger = open_ledger(db)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    w = IngestWorker(reg, ledger, BrokerSettings(host, port, username, password, engine=engine, servers=tuple(servers)),
                     group=group or None, batch_max=batch_max,
                     batch_ms=batch_ms, hold_ms=hold_ms, feed_options=feed_options).start()
    print("ready", flush=True, file=out)
    last = time.monotonic()
    try:
        while not stop.wait(0.2):
            if stats_every_s and time.monotonic() - last >= stats_every_s:
                last = time.monotonic()
                print(json.dumps(w.stats), flush=True, file=out)
    finally:
        w.stop()
        stats = w.stats
        print(json.dumps(stats), flush=True, file=out)
        ledger.close()
        reg.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.cloud.ingest", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1884,  # host_tools.broker.CLOUD_PORT
                   help="the broker's cloud listener (default: %(default)s, as `edgepay broker conf`)")
    p.add_argument("--user", default="cloud")
    p.add_argument("--password", default=None, help="prefer --password-env")
    p.add_argument("--password-env", default="EDGEPAY_MQTT_PASSWORD")
    p.add_argument("--registry", required=True, help="registry database path")
    p.add_argument("--db", required=True, help="ledger: sqlite:///path, a path, or postgresql://...")
    p.add_argument("--group", default="ingest", help="the workers that split the records ('' for none: every "
                   "worker sees every record)")
    p.add_argument("--engine", default="mosquitto", choices=("mosquitto", "nats", "rabbitmq"),
                   help="the broker engine: its MQTT version and whether workers can share a subscription")
    p.add_argument("--servers", default="", help="engine nats: the cluster's NATS client addresses, comma "
                   "separated (nats://host:port,...); a group then shares a durable JetStream consumer")
    p.add_argument("--ack-wait", type=float, default=30.0, help="engine nats: seconds before a message "
                   "taken by a worker that never settled it (it died) goes to another")
    p.add_argument("--prefetch", type=int, default=500, help="engine nats: at most this many messages "
                   "taken from the stream and not yet settled (the rest wait in the stream for any worker)")
    p.add_argument("--acks-via", default="nats", choices=("nats", "mqtt"),
                   help="engine nats: acks to devices by core NATS (default: fails over with the NATS connection) or MQTT QoS 1")
    p.add_argument("--batch-max", type=int, default=500)
    p.add_argument("--batch-ms", type=float, default=5.0)
    p.add_argument("--hold-ms", type=float, default=None, help="how long a record that does not link waits for "
                   "its predecessor (default 500; 3000 on a JetStream group, where a held record stays safe in "
                   "the stream and out of the prefetch window)")
    p.add_argument("--stats-every", type=float, default=0.0)
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    password = a.password if a.password is not None else os.environ.get(a.password_env, "")
    try:
        servers = tuple(x for x in a.servers.split(",") if x)
        opts = {"ack_wait_s": a.ack_wait, "acks": a.acks_via, "backlog_max": a.prefetch,
                "fetch_max": min(a.batch_max, a.prefetch)} if a.engine == "nats" and a.group else None
        run_worker(a.registry, a.db, a.host, a.port, a.user, password, a.group, a.batch_max, a.batch_ms,
                   a.hold_ms if a.hold_ms is not None else (3000.0 if opts else 500.0),
                   stats_every_s=a.stats_every, engine=a.engine, servers=servers, feed_options=opts)
    except (BrokerUnsupported, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
