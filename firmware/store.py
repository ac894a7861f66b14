# Small persistent values on flash (counters, settings). Each is one file replaced atomically by
# write-to-temp then rename, which littlefs and POSIX both make atomic: a power cut leaves the old
# or the new value, never a torn one.
import json
import os

ROOT = ""  # where the files are: a board's root fs; main.py sets it once at boot (hal/flash.mount_fs)


def read(name, default=None):
    try:
        with open(ROOT + name) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write(name, value):
    name = ROOT + name
    tmp = name + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, name)


class Counter:
    """A strictly increasing sequence number that survives reboots.

    Numbers are reserved on flash in blocks, so a flash write happens once per `block` numbers; after a
    reboot the counter skips to the end of the last reservation (gaps are allowed, going back never).
    """

    def __init__(self, name, block=64):
        self.name = name
        self.block = block
        self.ceiling = read(name, 0)
        self.value = self.ceiling  # last number handed out (or reserved before a reboot)

    def next(self):
        v = self.value + 1
        if v > self.ceiling:
            self.ceiling = v + self.block - 1
            write(self.name, self.ceiling)  # reserve before use: a cut here only skips numbers
        self.value = v
        return v

    def skip_to(self, v):
        """Never hand out a number <= v (e.g. the last record found in the journal)."""
        if v > self.value:
            self.value = v
