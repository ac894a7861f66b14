"""A stand-in device for key rotation tests (tests/test_rekey.py): SPEC §11 on the host codec, with
paho-mqtt as its link. It keeps a current key and at most one next key, numbers everything it
sends from one counter, journals records (signed once, resent unchanged until acknowledged), runs
the §5 command pipeline (kid, MAC, aud, seq, cti window) and answers `rekey` and `get_state`.

Knobs for the failure cases: `wrong_proof` (answers rekey with a proof of another key), `silent`
(answers nothing), `refuse_next` (never switches)."""
from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.ledger import GENESIS, chain_hash
from host_tools.cloud.registry import envelope_kid
from host_tools.protocol import ERROR_CODES, ProtocolError, encode_payload, keywrap, open_message, seal
from host_tools.protocol.cose import build_mac0


class RekeyDevice:
    def __init__(self, port: int, device: str, password: str, key: bytes, version: int = 1):
        self.device = device
        self.version, self.key = version, key
        self.next: tuple[int, bytes] | None = None   # keynext: (version, key)
        self.seq = 0
        self.last_cmd_seq = 0
        self.ctis: list[bytes] = []
        self.answered: dict[bytes, dict] = {}        # cti -> the result sent (redelivery)
        self.prev = GENESIS
        self.journal: dict[int, bytes] = {}          # unacknowledged records: seq -> envelope
        self.results: list[dict] = []                # every result sent, as a dict
        self.raw_cmds: list[bytes] = []              # every command received, as it came
        self.refused: list[str] = []                 # codes of downlinks refused
        self.switched_at: int | None = None          # the first seq signed under the new key
        self.wrong_proof = self.silent = self.refuse_next = False
        self.acked = 0
        self._lock = threading.RLock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311)
        self.c.username_pw_set(device, password)
        ready = threading.Event()
        self.c.on_connect = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert ready.wait(5), "the stand-in did not connect"
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe([(f"v1/dev/{device}/dn/cmd", 1), (f"v1/dev/{device}/dn/ack", 1)])
        assert done.wait(5)

    @property
    def kid(self) -> bytes:
        return f"{self.device}:{self.version}".encode()

    def next_seq(self) -> int:
        with self._lock:
            self.seq += 1
            return self.seq

    def publish(self, suffix: str, msg: dict, qos: int = 1, wait: bool = True) -> None:
        t = f"v1/dev/{self.device}/{suffix}"
        info = self.c.publish(t, seal(self.key, self.kid, t, msg), qos=qos)
        if wait:  # never from paho's own thread (the PUBACK it waits for is read there)
            info.wait_for_publish(5)

    # ---- records ---------------------------------------------------------------------------
    def record(self, sid: str, amount: int, publish: bool = True) -> int:
        """A sess_close journaled (signed once under the key current now) and sent; its seq."""
        t = f"v1/dev/{self.device}/up/rec"
        with self._lock:
            seq = self.next_seq()
            msg = {"type": "sess_close", "seq": seq, "prev": self.prev, "sid": sid, "payer": "p-1", "t0": 1_767_225_600,
                   "amount": amount, "cur": "EUR", "t1": 1_767_229_200}
            payload = encode_payload(msg, t)
            raw = build_mac0(self.key, self.kid, t, payload)
            self.prev = chain_hash(payload)
            self.journal[seq] = raw
        if publish:
            self.c.publish(t, raw, qos=1).wait_for_publish(5)
        return seq

    def resend(self) -> None:
        """Every unacknowledged record again, byte for byte (SPEC §6)."""
        t = f"v1/dev/{self.device}/up/rec"
        with self._lock:
            items = sorted(self.journal.items())
        for _, raw in items:
            self.c.publish(t, raw, qos=1).wait_for_publish(5)

    def heartbeat(self) -> int:
        seq = self.next_seq()
        self.publish("up/hb", {"type": "heartbeat", "seq": seq, "uptime": 1, "heap": 1000,
                               "jdepth": len(self.journal), "clock": 1}, qos=0)
        return seq

    # ---- downlinks -------------------------------------------------------------------------
    def _verify(self, topic: str, raw: bytes) -> dict:
        """SPEC §11: the current kid under the current key; the next kid under the next key, and
        then the switch (the next key made current before the command runs)."""
        kid = envelope_kid(raw)
        if self.next is not None and not self.refuse_next and kid == f"{self.device}:{self.next[0]}".encode():
            nv, nk = self.next
            msg = open_message(nk, kid, topic, raw)
            self.version, self.key, self.next = nv, nk, None
            self.switched_at = self.seq + 1
            return msg
        return open_message(self.key, self.kid, topic, raw)

    def _on_message(self, c, u, m) -> None:
        if m.topic.endswith("/dn/cmd"):
            self.raw_cmds.append(bytes(m.payload))
        with self._lock:
            try:
                msg = self._verify(m.topic, bytes(m.payload))
            except ProtocolError as e:
                self.refused.append(e.code)
                if m.topic.endswith("/dn/cmd"):  # unauthenticated: a refusal without cti
                    self._answer(None, e.code)
                return
            if m.topic.endswith("/dn/ack"):
                if msg["aud"] == self.device:
                    self.acked = max(self.acked, msg["upto"])
                    for s in [s for s in self.journal if s <= msg["upto"]]:
                        del self.journal[s]
                    if msg.get("resend"):
                        threading.Thread(target=self.resend, daemon=True).start()
                return
            self._command(msg)

    def _answer(self, cmd: dict | None, code: str, data: dict | None = None) -> None:
        if self.silent:
            return
        res = {"type": "cmd_result", "seq": self.next_seq(), "status": ERROR_CODES[code]}
        if cmd is not None:
            res.update(cti=cmd["cti"], cseq=cmd["seq"], name=cmd["name"])
        if data:
            res["data"] = data
        self.results.append(res)
        if cmd is not None:
            self.answered[cmd["cti"]] = res
        self.publish("up/res", res, wait=False)

    def _command(self, cmd: dict) -> None:
        if cmd["aud"] != self.device:
            self.refused.append("wrong_audience")
            return self._answer(cmd, "wrong_audience")
        if cmd["cti"] in self.answered and cmd["seq"] == self.answered[cmd["cti"]]["cseq"]:
            return self._answer(cmd, ERROR_NAMES_BY_NUM[self.answered[cmd["cti"]]["status"]], {"dup": True})
        if cmd["seq"] <= self.last_cmd_seq:
            self.refused.append("stale_seq")
            return self._answer(cmd, "stale_seq")
        if cmd["exp"] <= time.time():
            return self._answer(cmd, "expired")
        if cmd["cti"] in self.ctis:
            self.refused.append("replay")
            return self._answer(cmd, "replay")
        self.last_cmd_seq = cmd["seq"]
        self.ctis = (self.ctis + [cmd["cti"]])[-32:]
        name, args = cmd["name"], cmd.get("args") or {}
        if name == "get_state":
            return self._answer(cmd, "ok", {"kv": self.version, "jdepth": len(self.journal)})
        if name != "rekey":
            return self._answer(cmd, "unsupported")
        version, wrapped = args.get(1), args.get(2)
        if version != self.version + 1 or not isinstance(wrapped, bytes) or len(wrapped) != 40:
            return self._answer(cmd, "bad_args")
        try:
            nk = keywrap.unwrap(self.key, wrapped)
        except keywrap.KeyWrapError:
            return self._answer(cmd, "bad_args", {"why": "unwrap"})
        self.next = (version, nk)  # keynext, written before the answer
        kid = f"{self.device}:{version}"
        proof = keywrap.proof(os.urandom(32) if self.wrong_proof else nk, kid)
        self._answer(cmd, "ok", {"kv": version, "proof": proof})

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


ERROR_NAMES_BY_NUM = {n: c for c, n in ERROR_CODES.items()}
