# Firmware update slots (SPEC §10 "Slots"): on an ESP32 its OTA partitions (esp32.Partition, with
# the IDF boot loader's app rollback); on the VM the simulated chip's boot records and slots
# (hal/simota.py: sim-only, so a real board does not carry it).
from hal import ON_VM


class Slot:
    """An update slot: blocks [f, f + n) of the device d."""

    def __init__(self, d, f, n, label, bs):
        self.d, self.f, self.label, self.bs, self.size = d, f, label, bs, n * bs

    def erase(self, b):
        self.d.ioctl(6, self.f + b)

    def write(self, o, buf):  # programs only (NOR: clears bits); may span blocks
        self.d.writeblocks(self.f + o // self.bs, buf, o % self.bs)

    def readinto(self, o, buf):
        self.d.readblocks(self.f + o // self.bs, buf, o % self.bs)


class _Esp:
    def __init__(self, P):
        self.P, self.r = P, P(P.RUNNING)
        self.u = self.r.get_next_update()  # OSError: no OTA partitions

    def running(self):
        return self.r.info()[4]

    def next_update(self):
        p = self.u
        bs = p.ioctl(5, 0)
        return Slot(p, 0, p.info()[3] // bs, p.info()[4], bs)

    def set_boot(self, p, size, h):
        p.d.set_boot()

    def mark_valid(self):
        try:
            self.P.mark_app_valid_cancel_rollback()
        except OSError:
            pass  # not a pending trial (factory, or rollback not enabled)


def slots(board_cfg):
    """The board's update slots, or None when it has none."""
    if ON_VM:
        from hal import simota
        return simota.Slots(board_cfg.get("flash") or {})
    import sys
    if sys.platform != "esp32":
        return None  # RP2040 slots are not built yet
    import esp32
    try:
        return _Esp(esp32.Partition)
    except OSError:
        return None
