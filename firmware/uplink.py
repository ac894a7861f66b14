# Store-and-forward of money records (SPEC §6). A record is signed once and journaled before
# anything acts on it; it is then sent, in seq order with a bounded window, until the cloud's
# signed cumulative ack covers it. A broker PUBACK is never taken as delivery: Mosquitto loses
# acknowledged messages on a crash and drops QoS1 for slow subscribers.
import asyncio
import hashlib
import time

import cbor
import cose


class Uplink:
    def __init__(self, agent, journal, window=4, retry_ms=15000):
        self.agent = agent
        self.j = journal
        self.window = window
        self.retry_ms = retry_ms
        self.topic = agent.t_up + "rec"
        self.sent = journal.acked    # highest seq handed to MQTT since the last (re)start
        self.progress = time.ticks_ms()
        self.wake = asyncio.Event()
        agent.seq.skip_to(journal.last_seq)  # never reuse a number the journal holds
        agent.ack_hooks.append(self.on_ack)
        agent.jdepth = journal.depth

    def record(self, typ, fields, seq=None):
        """Sign and journal one money record; returns its seq once it is committed to flash.

        `seq` may be taken beforehand (agent.seq.next()) so a caller can note it first: after a
        power cut, the record was committed exactly when journal.last_seq >= seq, because nothing
        else can append between taking a number and appending (no await in between).
        Raises journal.JournalFull when there is no room: the caller must refuse to act.
        """
        if seq is None:
            seq = self.agent.seq.next()
        fields[0] = typ
        fields[8] = seq
        fields[9] = self.j.last_hash
        payload = cbor.encode(fields)
        data = cose.build(self.agent.hkey, self.agent.kid, self.topic, payload)
        self.j.append(seq, data, hashlib.sha256(payload).digest()[:16], True)
        self.wake.set()
        return seq

    def on_ack(self, upto, resend, quarantined=None):
        if quarantined:  # SPEC §6: the cloud holds these bytes, not its ledger; forgotten with upto as usual
            asyncio.create_task(self.agent.send(5, {10: "record_quarantined", 11: {"seqs": quarantined}, 12: True}))
        if upto > self.j.acked:
            self.j.ack(upto)
            self.progress = time.ticks_ms()
        if resend or self.sent < self.j.acked:
            self.sent = self.j.acked  # the cloud saw a gap after `upto`: send the rest again
        self.wake.set()

    async def run(self):
        while True:
            try:
                await self._pump()
            except Exception as e:  # e.g. MemoryError in the journal: retry, never stop forwarding
                print("uplink", repr(e))
                await asyncio.sleep_ms(500)
            try:
                await asyncio.wait_for_ms(self.wake.wait(), 500)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            # No ack progress for a while with records outstanding: the cloud may never have got
            # them (broker crash after PUBACK). Send everything unacknowledged again.
            if self.j.depth() and time.ticks_diff(time.ticks_ms(), self.progress) > self.retry_ms:
                self.sent = self.j.acked
                self.progress = time.ticks_ms()

    async def _pump(self):
        mq = self.agent.mqtt
        if not mq.up:
            return
        for seq, data in self.j.pending():
            if seq <= self.sent:
                continue
            if mq.inflight() >= self.window or not mq.up:
                return
            await mq.publish(self.topic, data, 1, False, False)  # into the QoS1 window, not awaited
            self.sent = seq
