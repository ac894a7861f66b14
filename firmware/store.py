# Small persistent values on flash (counters, settings). A power cut leaves the old value or the
# new one, never a torn one:
# - a small value (<= _INPLACE bytes, old and new) is rewritten in place, in one write() from
#   offset 0, padded with spaces (JSON ignores them) to the old length, without truncating first.
#   littlefs commits a file only on close (copy-on-write), so a cut reverts it; on the VM's host
#   filesystem a single write this small within one page lands whole or not at all, even when the
#   process is killed. One file update instead of a create, a write and a rename (on the
#   simulator's ext4, 0.03 ms against 0.3-0.6 ms: a rename over a file flushes it to disk).
# - anything else is written to a temporary file and renamed over the old one, which littlefs and
#   POSIX both make atomic.
import json
import os

_INPLACE = 512
ROOT = ""  # where the files are: a board's root fs; main.py sets it once at boot (hal/flash.mount_fs)


def read(name, default=None):
    try:
        with open(ROOT + name) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write(name, value):
    name = ROOT + name
    data = json.dumps(value).encode()
    if len(data) <= _INPLACE:
        try:
            f = open(name, "r+b")
        except OSError:  # not there yet: made by rename below
            f = None
        if f is not None:
            with f:
                n = f.seek(0, 2)
                if n <= _INPLACE:
                    f.seek(0)
                    f.write(data + b" " * (n - len(data)) if n > len(data) else data)
                    return
    tmp = name + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
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
