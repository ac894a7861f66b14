# Board definitions (boards/*.json): which MCU, which peripherals on which pins, and the board's
# limits. The host checks a board in full (boards/schema.json and host_tools/boardcheck.py) at
# build, provision, flash and in the simulator, and writes it as board.json beside config.json;
# config.json's "board" section keeps its name, kind and "sha256", the SHA-256 of board.json's
# exact bytes (its stamp). The device does not re-check the rules (that cost 5.5 KB of bytecode):
# at boot it checks the stamp, and a board file that is not byte for byte the one the host
# checked (edited, truncated, another board's, unstamped, not JSON) stops it, never later:
#   ConfigError: board file board.json differs from its stamp (...): it does not match what the host checked; ...
import json

from config import ConfigError

KINDS = ("gate", "vending", "rental")
FILE = "board.json"


class Board:
    """A checked board definition. Reads like the config's board dict (b["name"], b.get("flash"))."""

    def __init__(self, d):
        self.d = d
        self.name = d["name"]  # the fields apps and the HAL read often; the rest by b["mcu"], b.get(...)
        self.kind = d["kind"]
        self.sim = bool(d.get("sim"))
        self.peripherals = d.get("peripherals") or {}

    def __getitem__(self, k):
        return self.d[k]

    def __contains__(self, k):
        return k in self.d

    def get(self, k, default=None):
        return self.d.get(k, default)


def _refuse(why):
    raise ConfigError("board file " + FILE + " " + why + ": it does not match what the host checked;"
                      " rebuild with `edgepay build` and flash it with its config")


def read(stamp, path=FILE):
    """The Board in `path` if its bytes hash to `stamp` (hex SHA-256); ConfigError otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        _refuse("not found")
    import hashlib
    from binascii import hexlify
    if hexlify(hashlib.sha256(data).digest()).decode() != stamp:
        _refuse("differs from its stamp (config.json board 'sha256')")
    try:
        d = json.loads(data)
    except ValueError:
        _refuse("is not valid JSON")
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d.get("kind") not in KINDS:
        _refuse("is not a board definition")
    return Board(d)


def load(src):
    """A Board from the config's "board" section (config.py checked its name and kind):
    {"name", "kind", "sha256"} names a stamped board file (read). A section with no board file
    and no "mcu"/"peripherals" is the legacy form: a board without peripherals."""
    if isinstance(src, Board):
        return src
    if "sha256" in src:
        return read(src["sha256"])
    if "mcu" in src or "peripherals" in src:
        _refuse("not found (config.json holds an unstamped board definition)")
    import os
    try:
        os.stat(FILE)
    except OSError:
        return Board(src)
    _refuse("has no stamp (config.json board 'sha256')")


def boot(cfg):
    """Check cfg["board"] at boot; on error print it and halt (exit 3 on the VM): no boot loop."""
    try:
        b = load(cfg["board"])
    except ConfigError as e:
        print("config error:", e)
        from hal import reset
        reset.halt(reset.EXIT_CONFIG)
        raise
    cfg["board"] = b
    return b
