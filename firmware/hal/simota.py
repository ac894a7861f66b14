# The simulated board's update slots (SPEC §10 "Slots"), behind hal/ota.py on the VM: two boot
# records (otadata, 2 blocks) then ota_0 and ota_1, on the simulated chip after the main filesystem
# (hal/simflash.py ota_dev: every write shares the chip's power cut). host_tools/sim/bootloader.py
# boots from these records; running() repeats its rule from the records alone (the boot loader
# marks a slot it refuses aborted, so the states say it all).
# A record is 49 bytes at the start of its block: seq u32 LE, slot u8, 3 zero bytes, size u32 LE,
# SHA-256 of the payload, SHA-256[:4] of those 44 bytes, then the state byte programmed in place.
from hal import simflash
from hal.ota import Slot

TRIAL, VALID = 0xFC, 0xF8  # state bytes; 0xFF/0xFE new, any other aborted


class Slots:
    def __init__(self, fc):
        self.d, self.n, self.bs = simflash.ota_dev(fc), simflash.OTA_BLOCKS, fc.get("block_size", 4096)

    def _recs(self):
        # the records that check, newest first: (seq, slot, state, otadata block)
        from hashlib import sha256
        r = []
        for b in (0, 1):
            x = bytearray(49)
            self.d.readblocks(b, x, 0)
            if sha256(x[:44]).digest()[:4] == x[44:48] and x[4] < 2 and not any(x[5:8]):
                r.append((int.from_bytes(x[:4], "little"), x[4], x[48], b))
        r.sort(reverse=True)
        return r

    def _run(self):
        # the boot loader's choice, read back: (slot, its record) or (-1, None) for factory. A new
        # record is not booted yet (set_boot before the reboot): the other record's slot runs.
        r = self._recs() + [None, None]
        n, o = r[0], r[1]
        if n and n[2] in (TRIAL, VALID):
            return n[1], n
        if o and (o[2] == VALID or n[2] >= 0xFE and o[2] == TRIAL):
            return o[1], o
        return -1, None

    def running(self):
        i = self._run()[0]
        return "factory" if i < 0 else "ota_%d" % i

    def trial(self):
        r = self._recs()
        return bool(r) and r[0][2] == TRIAL

    def next_update(self):
        i = 0 if self._run()[0] else 1  # factory or ota_1 running: ota_0
        return Slot(self.d, 2 + i * self.n, self.n, "ota_%d" % i, self.bs)

    def set_boot(self, p, size, h):
        # erase the block not holding the running slot's record, write the new one there (new)
        from hashlib import sha256
        if not 0 < size <= p.size or len(h) != 32:
            raise ValueError("boot record")
        r = self._recs()
        k = self._run()[1] or (r[0] if r else (0, 0, 0, 1))
        x = bytearray(49)
        x[:4] = ((r[0][0] + 1) if r else 1).to_bytes(4, "little")
        x[4] = (p.f - 2) // self.n
        x[8:12] = size.to_bytes(4, "little")
        x[12:44] = h
        x[44:48] = sha256(x[:44]).digest()[:4]
        x[48] = 0xFF
        b = 1 - k[3]
        self.d.ioctl(6, b)
        self.d.writeblocks(b, x, 0)

    def mark_valid(self):
        r = self._recs()
        if r and r[0][2] == TRIAL:
            self.d.writeblocks(r[0][3], bytes((VALID,)), 48)
