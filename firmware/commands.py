# The command pipeline: a command runs only if it is authentic, for this device, fresh and not
# replayed. Checks run in the SPEC §5 order; the first failure is answered with its code and
# nothing is actuated. Handlers are registered by name, so apps add their own.
import asyncio
from binascii import hexlify, unhexlify
from micropython import const

import msg
import store
from cbor import CodecError

# command fields (SPEC §4, type 11): const names cost nothing in the compiled bundle
_K_AUD = const(3)
_K_EXP = const(4)
_K_NBF = const(5)
_K_IAT = const(6)
_K_CTI = const(7)
_K_SEQ = const(8)
_K_NAME = const(10)
_K_ARGS = const(11)
# cmd_result (type 9): 0 type, 7 cti, 10 status, 11 name, 12 data, 13 cseq
_T_RES = const(9)
_R_STATUS = const(10)
_R_NAME = const(11)
_R_DATA = const(12)
_R_CSEQ = const(13)


class CommandError(Exception):
    """Raised by a handler to refuse with a typed code: bad_args, refused, busy, failed."""

    def __init__(self, code, detail=None):
        super().__init__(code)
        self.code = code
        self.detail = detail


class Outcome:
    def __init__(self, code, cti=None, name=None, cseq=None, data=None):
        self.code = code
        self.cti = cti
        self.name = name
        self.cseq = cseq
        self.data = data
        self.after = None  # a callable to run once the result is sent (reboot)
        self.again = False  # an answer to a redelivery of a command already answered


class Pipeline:
    def __init__(self, device, signer, clock, topic, window=16, state_file="cmdstate"):
        self.device = device
        self.signer = signer  # agent.Signer: verifies and schema-checks
        self.clock = clock
        self.topic = topic
        self.state_file = state_file
        # [seq, cti hex, outcome code or None while running]: the last accepted command survives a
        # reset, so a redelivery after a power cut is answered, never run twice, never misreported.
        last = store.read(state_file, None) or [0, "", "ok"]
        self.last_seq = last[0]
        # The recent window, allocated once (no tuple and bytes per command): seq, cti (length +
        # up to 16 bytes), outcome (its SPEC §7 number; 255 interrupted); slot k % window is the kth.
        self.window = window
        self._seqs = [0] * window
        self._ctis = bytearray(17 * window)
        self._codes = bytearray(window)
        self._n = 0
        if last[0]:
            self._remember(last[0], unhexlify(last[1]), last[2] or "interrupted")
        self.grace = 30           # x 100 ms a command may wait for the clock, once per boot
        self.handlers = {}        # name -> fn
        self.untimed = []         # names of the read-only commands that may run untrusted

    def on(self, name, needs_time=True):
        """Decorator: register `fn(args) -> data or None` (may be async) for command `name`.

        needs_time=False only for read-only commands: they may run before the clock is trusted.
        """
        def deco(fn):
            self.handlers[name] = fn
            if not needs_time:
                self.untimed.append(name)
            return fn
        return deco

    async def handle(self, data):
        try:
            p = self.signer.open(self.topic, data)
        except CodecError as e:
            # Unauthenticated: nothing in it can be believed, so the refusal names no command (no cti,
            # no cseq). A forged copy of a real command can never be taken for its outcome (SPEC §4).
            return Outcome(e.code)
        cti = p[_K_CTI]
        name = p[_K_NAME]
        seq = p[_K_SEQ]
        if p[_K_AUD] != self.device:
            return Outcome("wrong_audience", cti, name, seq)
        c = self._seen(cti, seq)
        if c >= 0:
            # A redelivery (QoS1 duplicate, or the broker resending after our reset): answer
            # again with the first outcome; never run it twice.
            return _again(c, cti, name, seq)
        if seq <= self.last_seq:
            return Outcome("stale_seq", cti, name, seq)
        # Accept the seq before anything else can act: a replay can never run again, even across
        # a power cut right after this line.
        self._persist(seq, cti, None)
        o = await self._checked(p, cti, name, seq)
        self._persist(seq, cti, o.code)
        self._remember(seq, cti, o.code)
        return o

    def _remember(self, seq, cti, code):
        i = self._n % self.window
        n = len(cti)
        self._seqs[i] = seq
        c = self._ctis
        c[17 * i] = n
        c[17 * i + 1:17 * i + 1 + n] = cti
        self._codes[i] = msg.ERRORS.get(code, 255)
        self._n += 1

    def _seen(self, cti, seq=None):
        """The outcome number of a remembered command with this cti (and this seq), else -1."""
        c = self._ctis
        n = len(cti)
        for i in range(min(self._n, self.window)):
            if (seq is not None and self._seqs[i] != seq) or c[17 * i] != n:
                continue
            o = 17 * i + 1
            for j in range(n):
                if c[o + j] != cti[j]:
                    break
            else:
                return self._codes[i]
        return -1

    async def _checked(self, p, cti, name, seq):
        entry = self.handlers.get(name)
        now = self.clock.now()
        if now is None and (entry is None or name not in self.untimed):
            # After a boot the broker's backlog arrives before the time answer: a command that
            # needs time waits a few seconds for it (once per boot) rather than be refused.
            while self.grace and now is None:
                self.grace -= 1
                await asyncio.sleep_ms(100)
                now = self.clock.now()
            if now is None:
                return Outcome("clock_untrusted", cti, name, seq)
        # A command lives at most cmd_ttl_s, and is never issued in our future: one signed to
        # last for years, or held in a queue, cannot actuate later (SPEC §5).
        s = self.clock.settings
        if p[_K_EXP] - p[_K_IAT] > s["cmd_ttl_s"]:
            return Outcome("ttl_exceeded", cti, name, seq)
        if now is not None:
            if p[_K_IAT] > now + s["clock_skew_s"]:
                return Outcome("future_iat", cti, name, seq)
            if now >= p[_K_EXP]:
                return Outcome("expired", cti, name, seq)
            if _K_NBF in p and now < p[_K_NBF]:
                return Outcome("not_yet_valid", cti, name, seq)
        if self._seen(cti) >= 0:
            return Outcome("replay", cti, name, seq)
        return await self._run(entry, p, cti, name, seq)

    def _persist(self, seq, cti, code):
        store.write(self.state_file, [seq, hexlify(cti).decode(), code])
        self.last_seq = seq

    async def _run(self, entry, p, cti, name, seq):
        if entry is None:
            return Outcome("unsupported", cti, name, seq)
        args = p.get(_K_ARGS, {})
        try:
            r = entry(args)
            if hasattr(r, "send"):  # a coroutine: MicroPython has no inspect
                r = await r
        except CommandError as e:
            o = Outcome(e.code, cti, name, seq)
            if e.detail is not None:
                o.data = {"why": e.detail}
            return o
        except Exception as e:  # a handler bug must not take the device down
            o = Outcome("failed", cti, name, seq)
            o.data = {"why": repr(e)[:60]}
            return o
        o = Outcome("ok", cti, name, seq)
        if isinstance(r, tuple):  # (data, after)
            o.data, o.after = r
        else:
            o.data = r
        return o

    def result(self, o):
        """The cmd_result payload fields (int keys, seq added by the sender) for an outcome."""
        f = {0: _T_RES, _R_STATUS: msg.ERRORS[o.code]}
        if o.cti is not None:
            f[_K_CTI] = o.cti
        if o.name is not None:
            f[_R_NAME] = o.name
        if o.data:
            f[_R_DATA] = o.data
        if o.cseq is not None:
            f[_R_CSEQ] = o.cseq
        return f


def _again(num, cti, name, seq):
    if num == 255:  # accepted, then a reset came before it finished: outcome unknown
        o = Outcome("failed", cti, name, seq)
        o.data = {"why": "interrupted"}
    else:
        code = "failed"
        for k, v in msg.ERRORS.items():
            if v == num:
                code = k
        o = Outcome(code, cti, name, seq)
        o.data = {"dup": True}
    o.again = True
    return o

