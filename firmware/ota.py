# The firmware updater (SPEC §10 "The update on the device"). The agent imports it only when an
# update is in hand (an `ota` command, or one left on flash by the last boot): a device that is
# not updating holds none of it, nor release/ed25519/sha512, in RAM.
#
# One file on flash, "ota", says where an update is: {"st": "dl" | "staged" | "inst", "v", "seq",
# "size", "sha" (hex), "chunk", "fmt", "w" (window or null), "slot", "n" (chunks written), "t"
# (install attempts), "tried", "why"}. The manifest was verified once, when it came; its fields
# are kept, not its bytes. "fw" holds the installed release ({"seq", "v"}) once one is confirmed.
import asyncio
import gc
import time
from binascii import hexlify, unhexlify

import store
from clock import log

_T_EVT = 4
_T_REQ = 12
JOURNAL_FORMAT = 1  # the layout firmware/journal.py writes (manifest key 8)


class Updater:
    def __init__(self, a, slots, st=None):
        self.a = a
        self.s = slots
        self.st = st
        self.task = None
        self.how = None  # what this boot is to the update (boot()), started by the agent
        self._want = -1   # the chunk index asked for, -1 when none is outstanding
        self._got = None  # its data, once a chunk that matches has come
        self._ev = asyncio.Event()

    # ---- events -----------------------------------------------------------------------------
    async def event(self, state, **kw):
        st = self.st or {}
        kw["st"] = state
        kw["v"] = st.get("v", "")
        kw["seq"] = st.get("seq", 0)
        log("ota", kw)
        try:  # QoS 1, but never held up for long by a link that is down
            await asyncio.wait_for_ms(self.a.send(_T_EVT, {10: "ota", 11: kw}, 1), 10000)
        except Exception as e:  # the link is stopping: the state is on flash, the cloud asks again
            log("ota event", repr(e))

    def _save(self):
        store.write("ota", self.st)

    def _drop(self):
        self.st = None
        self._save()  # null: no update in hand

    async def _fail(self, why):
        await self.event("failed", why=why)
        self._drop()

    # ---- the command ------------------------------------------------------------------------
    def offer(self, raw):
        """An `ota` command's manifest: -> the state it is in; ReleaseError (its .code the
        reason) when it is refused. Checks everything before a byte is written."""
        import release
        a = self.a
        # the last key list taken (set_release_keys), else the provisioned keys (config.json "ota")
        t = release.trust(a.cfg)
        m = release.open_manifest(raw, t[1], t[2])
        sha = hexlify(m.sha256).decode()
        st = self.st
        if st and st["sha"] == sha:
            return st["st"]  # the same release again: where it is
        if st and st["st"] == "inst":
            raise release.ReleaseError("installed")  # a trial runs: it is confirmed or rolled back first
        fw = store.read("fw") or {}
        p = self.s.next_update()
        # the window is a wait, not a refusal (SPEC §10): checked again before the install
        m.check(a.board["name"], a.board["kind"], fw.get("seq", 0), p.size, JOURNAL_FORMAT,
                m.window[0] if m.window else None, fw.get("v", a.fw))
        if self.task is not None:
            self.task.cancel()  # another release replaces the one in progress
        self.st = {"st": "dl", "v": m.version, "seq": m.seq, "size": m.size, "sha": sha,
                   "chunk": m.chunk, "fmt": m.format, "w": m.window, "slot": p.label, "n": 0, "t": 0}
        self._save()
        self.start()
        return "downloading"

    def abort(self):
        st = self.st
        if not st:
            return "none"
        if st["st"] == "inst":
            return None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        asyncio.create_task(self._fail("aborted"))
        return "aborted"

    # ---- after a boot -----------------------------------------------------------------------
    def boot(self):
        """At agent start, with the "ota" file's state: what this boot is to the update."""
        st = self.st
        if st["st"] != "inst":
            return "resume"
        if self.s.running() == st["slot"]:
            st["tried"] = 1  # before any app code runs: a crash from here on is a failed trial
            self._save()
            self.a.fw = st["v"]
            return "trial"
        if st.get("tried"):
            return "rolled_back"
        # the switch never took (a cut before the boot record landed): install again, twice at most
        st["st"] = "staged"
        self._save()
        return "resume" if st["t"] < 2 else "boot_failed"

    def start(self, how="resume"):
        self.task = asyncio.create_task(self._run(how))

    async def _run(self, how):
        try:
            while not self.a.mqtt.up:
                await asyncio.sleep_ms(200)
            if how == "trial":
                await self._trial()
            elif how == "rolled_back":
                await self.event("rolled_back", why=self.st.get("why", "reset"))
                self._drop()
            elif how == "boot_failed":
                await self._fail("boot_failed")
            else:
                if self.st["st"] == "dl":
                    await self.event("signature_verified")
                    await self._download()
                if await self._verify():
                    await self._install()
        except asyncio.CancelledError:
            pass
        except Exception as e:  # an updater bug must not take the device down: the state stays
            log("ota", repr(e))

    # ---- download ---------------------------------------------------------------------------
    def on_chunk(self, p):
        """A verified chunk for this device (payload dict): taken only if it is the one asked."""
        st = self.st
        if self._want < 0 or st is None or p[11] != self._want or bytes(p[10]) != unhexlify(st["sha"][:16]):
            return
        d = p[12]
        if len(d) != min(st["chunk"], st["size"] - self._want * st["chunk"]):
            return
        self._want = -1
        self._got = d
        self._ev.set()

    def _write(self, p, off, d):
        bs = p.bs
        b = (off + bs - 1) // bs  # every block whose first byte is in [off, off + len) is erased first
        while b * bs < off + len(d):
            p.erase(b)
            b += 1
        p.write(off, d)

    async def _download(self):
        st = self.st
        p = self._slot()
        total = (st["size"] + st["chunk"] - 1) // st["chunk"]
        rel = unhexlify(st["sha"][:16])
        n = st["n"]
        wait = 1000
        while n < total:
            if not self.a.mqtt.up:
                await asyncio.sleep_ms(200)
                continue
            self._got = None
            gc.collect()  # a chunk needs ~1.6 KB in one piece twice (the packet, its data)
            self._ev.clear()
            self._want = n
            await self.a.send(_T_REQ, {10: rel, 11: n}, 0)
            try:
                await asyncio.wait_for_ms(self._ev.wait(), 5000)
            except asyncio.TimeoutError:
                self._want = -1
                await asyncio.sleep_ms(wait)  # the cloud is silent: ask again, slower each time
                wait = min(wait * 2, 30000)
                continue
            wait = 1000
            d = self._got
            self._got = None
            self._write(p, n * st["chunk"], d)
            d = None
            n += 1
            st["n"] = n
            self._save()  # after the bytes: a resume fetches at most the chunk in flight again
            if n < total and n * 4 // total != (n - 1) * 4 // total:  # each quarter (downloaded: all)
                await self.event("downloading", n=n, of=total)
        st["st"] = "staged"
        self._save()
        await self.event("downloaded")

    def _slot(self):
        p = self.s.next_update()
        if p.label != self.st["slot"]:  # the running slot changed under a staged update
            raise ValueError("slot")
        return p

    def readinto(self, mv):
        # the staged slot as a file (sequential, from 0) for release.Archive / check_payload
        self._p.readinto(self._o, mv)
        self._o += len(mv)
        return len(mv)

    async def _verify(self):
        import release
        st = self.st
        self.size = st["size"]  # self is the manifest too: the two fields they read
        self.sha256 = unhexlify(st["sha"])
        self._p = self._slot()
        self._o = 0
        buf = bytearray(256)
        try:
            if st["fmt"] == "bundle":
                ar = release.Archive(self, self)
                while ar.next():
                    while ar.readinto(buf):
                        pass
            else:
                release.check_payload(self, self, buf)
        except release.ReleaseError as e:
            await self._fail(e.code)
            return False
        return True

    # ---- install ----------------------------------------------------------------------------
    def _blocked(self):
        w = self.st["w"]
        if w is not None:
            now = self.a.clock.now()
            if now is None or not w[0] <= now < w[1]:
                return "outside_window"
        b = self.a._busy  # the app's (Context.on_busy)
        if b and b():
            return "busy"
        return None

    async def _install(self):
        st = self.st
        t0 = time.ticks_ms()
        said = None
        while True:
            why = self._blocked()
            if why is None:
                break
            if why != said:
                said = why
                await self.event("deferred", why=why)
            if time.ticks_diff(time.ticks_ms(), t0) > self.a.settings["ota_defer_s"] * 1000:
                await self._fail("deferred_timeout")
                return
            await asyncio.sleep_ms(500)
        await self.event("installing")
        p = self._slot()
        st["st"] = "inst"
        st["t"] += 1
        st.pop("tried", None)
        self._save()  # first: a cut after the switch boots a trial that knows it is one
        self.s.set_boot(p, st["size"], unhexlify(st["sha"]))
        await self.event("installed")
        await self.a._reboot(0)

    # ---- trial ------------------------------------------------------------------------------
    async def _trial(self):
        a = self.a
        why = None if a.self_test() else "self_test"
        t0 = time.ticks_ms()
        while why is None and not a.clock.trusted():
            if time.ticks_diff(time.ticks_ms(), t0) > a.settings["ota_confirm_s"] * 1000:
                why = "no_cloud"
            await asyncio.sleep_ms(200)
        if why is not None:
            self.st["why"] = why
            self._save()
            log("ota trial failed", why)
            await a._reboot(0)  # unconfirmed: the boot loader boots the previous slot
            return
        self.s.mark_valid()
        store.write("fw", {"seq": self.st["seq"], "v": self.st["v"]})
        await self.event("confirmed")
        self._drop()

