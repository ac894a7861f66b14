# Store-and-forward of money records (SPEC §6). A record is signed once and journaled before
# anything acts on it; it is then sent, in seq order with a bounded window, until the cloud's
# signed cumulative ack covers it. A broker PUBACK is never taken as delivery: Mosquitto loses
# acknowledged messages on a crash and drops QoS1 for slow subscribers.
import asyncio
import hashlib
import time
from micropython import const

_K_TYPE = const(0)
_K_SEQ = const(8)
_K_PREV = const(9)  # the hash of the record before (the chain, SPEC §6)
_A_UPTO = const(10)  # ack (type 21) fields
_A_RESEND = const(11)
_A_QUAR = const(12)


class Uplink:
    """Built from a signer (agent.Signer), the sequence counter and the MQTT client; `alarm` is
    the agent's alarm(code, detail) (a quarantine is reported). It sends on the device's up/rec
    and takes the cloud's acks on its dn/ack (base: "v1/dev/<id>/")."""

    def __init__(self, signer, seq, mqtt, base, journal, alarm, window=4, retry_ms=15000):
        self.signer = signer
        self.seq = seq
        self.mq = mqtt
        self.alarm = alarm
        self.j = journal
        self.window = window
        self.retry_ms = retry_ms
        self.topic = base + "up/rec"
        mqtt.subscribe(base + "dn/ack", 1, self._on_ack)
        self.sent = journal.acked    # highest seq handed to MQTT since the last (re)start
        self.progress = time.ticks_ms()
        self.wake = asyncio.Event()

    def record(self, typ, fields, seq=None):
        """Check, sign and journal one money record; returns its seq once it is committed to flash.

        `seq` may be taken beforehand (seq.next()) so a caller can note it first: after a power
        cut, the record was committed exactly when committed(seq), because nothing else can
        append between taking a number and appending (no await in between).
        Raises CodecError (a malformed record: the cloud would refuse it and never ack it) or
        journal.JournalFull (no room), journaling nothing: the caller must refuse to act.
        """
        if seq is None:
            seq = self.seq.next()
        fields[_K_TYPE] = typ
        fields[_K_SEQ] = seq
        fields[_K_PREV] = self.j.last_hash
        data, payload = self.signer.seal(self.topic, fields)
        self.j.append(seq, data, hashlib.sha256(payload).digest()[:16], True)
        self.wake.set()
        return seq

    def committed(self, seq):
        return self.j.last_seq >= seq

    def _on_ack(self, topic, data, retain, dup):
        p = self.signer.open_dn(topic, data)
        if p is not None:
            self.on_ack(p[_A_UPTO], p.get(_A_RESEND, False), p.get(_A_QUAR))

    def on_ack(self, upto, resend, quarantined=None):
        if quarantined:  # SPEC §6: the cloud holds these bytes, not its ledger; forgotten with upto as usual
            self.alarm("record_quarantined", {"seqs": quarantined})
        if upto > self.j.acked:
            self.j.ack(upto)
            self.progress = time.ticks_ms()
        if resend or self.sent < self.j.acked:
            self.sent = self.j.acked  # the cloud saw a gap after `upto`: send the rest again
        self.wake.set()

    async def _tick(self):
        while True:  # wakes run() at least every 500 ms (a wait_for held ~0.6 KB and made as much each time)
            await asyncio.sleep_ms(500)
            self.wake.set()

    async def run(self):
        asyncio.create_task(self._tick())
        while True:
            try:
                await self._pump()
            except Exception as e:  # e.g. MemoryError in the journal: retry, never stop forwarding
                print("uplink", repr(e))
                await asyncio.sleep_ms(500)
            await self.wake.wait()
            self.wake.clear()
            # No ack progress for a while with records outstanding: the cloud may never have got
            # them (broker crash after PUBACK). Send everything unacknowledged again.
            if self.j.depth() and time.ticks_diff(time.ticks_ms(), self.progress) > self.retry_ms:
                self.sent = self.j.acked
                self.progress = time.ticks_ms()

    async def _pump(self):
        mq = self.mq
        if not mq.up:
            return
        for seq, data in self.j.pending():
            if seq <= self.sent:
                continue
            if mq.inflight() >= self.window or not mq.up:
                return
            await mq.publish(self.topic, data, 1, False, False)  # into the QoS1 window, not awaited
            self.sent = seq
