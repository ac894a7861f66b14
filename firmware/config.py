# Device configuration: provisioned once onto flash as config.json, checked at boot so that a bad
# file stops the device with a clear message instead of failing later in the field.
import json


class ConfigError(Exception):
    pass


def _need(d, key, kind, where):
    if key not in d:
        raise ConfigError(where + ": missing '" + key + "'")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(where + ": '" + key + "' has the wrong type")
    return v


def _device_id_ok(s):
    if not 1 <= len(s) <= 32 or s[0] == "-":
        return False
    for ch in s:
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"):
            return False
    return True


# Runtime settings a cloud `set_config` may change: name -> (min, max). Kept apart from identity.
SETTINGS = {
    "hb_s": (5, 3600),          # heartbeat interval
    "keepalive_s": (2, 1200),   # MQTT keepalive
    "backoff_min_ms": (50, 60000),
    "backoff_max_ms": (100, 600000),
    "cmd_window": (4, 64),      # command ids remembered for replay detection
    "cmd_ttl_s": (10, 604800),  # a command's exp - iat at most this (SPEC §5)
    "clock_skew_s": (0, 3600),  # a command's iat at most this far ahead of the device's clock
    "time_s": (5, 86400),       # ask the cloud's time this often (and at each connect)
    "ota_defer_s": (10, 604800),  # an update waits at most this for a moment nothing is in progress
    "ota_confirm_s": (10, 3600),  # a trial release must reach the cloud within this, or roll back
}
DEFAULTS = {"hb_s": 30, "keepalive_s": 30, "backoff_min_ms": 500, "backoff_max_ms": 30000, "cmd_window": 16,
            "cmd_ttl_s": 600, "clock_skew_s": 120, "time_s": 600,
            "ota_defer_s": 3600, "ota_confirm_s": 120}


def load(path="config.json"):
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError:
        raise ConfigError(path + ": not found (provision the device first)")
    except ValueError:
        raise ConfigError(path + ": not valid JSON")
    if not isinstance(d, dict):
        raise ConfigError(path + ": not an object")
    dev = _need(d, "device", str, path)
    if not _device_id_ok(dev):
        raise ConfigError(path + ": bad device id '" + dev + "'")
    kid = _need(d, "kid", str, path)
    if not kid.startswith(dev + ":") or not kid[len(dev) + 1:].isdigit():
        raise ConfigError(path + ": kid must be '" + dev + ":<version>'")
    key = _need(d, "key", str, path)
    try:
        import binascii
        d["key_bytes"] = binascii.unhexlify(key)
    except Exception:
        raise ConfigError(path + ": key is not hex")
    if len(d["key_bytes"]) != 32:
        raise ConfigError(path + ": key must be 256 bits")
    b = _need(d, "broker", dict, path)
    w = path + " broker"
    bl = b.get("brokers")  # [[host, port], ...]: tried in turn (mqtt_client.py); else host and port
    if bl is None:
        _need(b, "host", str, w)
        _need(b, "port", int, w)
    else:
        ok = "host" not in b and "port" not in b and type(bl) is list and 0 < len(bl) < 5
        for e in bl if ok else ():
            ok = ok and type(e) is list and len(e) == 2 and type(e[0]) is str and e[0] != "" \
                and type(e[1]) is int and 0 < e[1] < 65536
        if not ok:
            raise ConfigError(w + ": 'brokers' must be 1..4 [host, port] and no 'host'/'port'")
    _need(b, "password", str, w)
    board = _need(d, "board", dict, path)
    _need(board, "name", str, path + " board")
    kind = _need(board, "kind", str, path + " board")
    if kind not in ("gate", "vending", "rental"):
        raise ConfigError(path + " board: unknown kind '" + kind + "'")
    w = d.get("wifi")  # {"ssid", "password"}: net.py joins it (boards with a radio)
    if w is not None:
        _need(d, "wifi", dict, path)
        _need(w, "ssid", str, path + " wifi")
        _need(w, "password", str, path + " wifi")
    sim = d.get("sim")  # simulator only (the sim HAL's host and port, a clock rate): never on a board
    if sim is not None:
        rate = sim.get("clock_rate", 1) if isinstance(sim, dict) else None
        if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= 3600:
            raise ConfigError(path + " sim: clock_rate must be an integer 1..3600")
    settings = dict(DEFAULTS)
    for k, v in d.get("settings", {}).items():
        check_setting(k, v)
        settings[k] = v
    d["settings"] = settings
    return d


def check_setting(name, value):
    """Raise ValueError unless `name` is a known setting and `value` is in its range."""
    if name not in SETTINGS:
        raise ValueError("unknown setting " + str(name))
    lo, hi = SETTINGS[name]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError("bad value for " + name)
