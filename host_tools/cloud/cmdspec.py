"""The commands a device knows and their arguments (protocol/SPEC.md §4, "Commands"), for
`edgepay cmd`: listed in its --help, and checked before anything is signed, so a typo or a missing
argument is a usage error naming what is valid, not a signed command the device refuses with
`bad_args`. `--unchecked` sends a name or argument this table does not know yet (SPEC: commands are
added without a version change)."""
from __future__ import annotations

import re
from typing import Any, NamedTuple

_CUR = re.compile(r"[A-Z]{3}")

# what each type accepts, as the error says it
TYPES = {
    "uint": "an unsigned integer, e.g. 0",
    "tstr": "text, e.g. s-1",
    "bool": "true or false",
    "cur": "an ISO 4217 currency code, e.g. EUR",
    "list": "a JSON list, e.g. '[[\"cola\",250]]'",
    "bstr": "bytes as hex, e.g. a1b2",
}


class Arg(NamedTuple):
    key: int
    name: str
    kind: str
    required: bool = True
    size: tuple[int, int] | None = None  # text length bounds in UTF-8 bytes; a bstr's in bytes

    def label(self) -> str:
        return f"{self.key}{'' if self.required else '?'}:{self.name}"


def _a(key: int, name: str, type_: str, required: bool = True, size: tuple[int, int] | None = None) -> Arg:
    return Arg(key, name, type_, required, size)


# name -> (args, what it does). set_config's args are free text keys (None below).
COMMANDS: dict[str, tuple[tuple[Arg, ...] | None, str]] = {
    "open": ((_a(1, "target", "uint"), _a(2, "sid", "tstr", False), _a(3, "hold_s", "uint", False)),
             "staff: open a barrier (0 entry, 1 exit), door (0) or slot"),
    "set_tariff": ((_a(1, "version", "uint"), _a(2, "cur", "cur"), _a(3, "free_min", "uint", False),
                    _a(4, "period_s", "uint", False), _a(5, "period_price", "uint", False),
                    _a(6, "daily_cap", "uint", False), _a(7, "lost_price", "uint", False),
                    _a(8, "prices", "list", False), _a(9, "purchase_price", "uint", False)),
                   "install a tariff / price list (money in minor units)"),
    "set_config": (None, "runtime settings by name, e.g. hb_s=60"),
    "set_allowlist": ((_a(1, "version", "uint"), _a(2, "mode", "uint"), _a(3, "base", "uint", False),
                       _a(4, "add", "list", False), _a(5, "remove", "list", False)),
                      "offline allowlist (mode 0 full, 1 differential)"),
    "cancel_session": ((_a(1, "sid", "tstr"),), "staff: end a session at no charge"),
    "display": ((_a(1, "text", "tstr", size=(1, 64)), _a(2, "seconds", "uint", False)), "show a message"),
    "get_state": ((), "the device's state"),
    "sync_time": ((), "ask the cloud's time now"),
    "reboot": ((_a(1, "delay_s", "uint", False),), "reboot after answering"),
    "auth": ((_a(1, "sid", "tstr"), _a(2, "granted", "bool"), _a(3, "auth", "tstr", False),
              _a(4, "limit", "uint", False), _a(5, "reason", "tstr", False, (1, 32)), _a(6, "mode", "uint", False),
              _a(7, "t0", "uint", False), _a(8, "rsid", "tstr", False), _a(9, "payer", "tstr", False)),
             "the cloud's answer to an auth_req"),
    "paid": ((_a(1, "sid", "tstr"), _a(2, "auth", "tstr")), "paid out of band (parking QR): open"),
    "set_policy": ((_a(1, "version", "uint"), _a(2, "cur", "cur"), _a(3, "per_payer_cap", "uint"),
                    _a(4, "total_cap", "uint"), _a(5, "max_sessions", "uint"), _a(6, "max_duration_s", "uint")),
                   "the offline risk policy"),
    "ota": ((_a(1, "manifest", "bstr"),),
            "start a firmware update from a signed release manifest (a campaign: edgepay ota deploy)"),
    "ota_abort": ((), "drop an update not yet installed (the staged slot is never booted)"),
    "rekey": ((_a(1, "version", "uint"), _a(2, "wrapped", "bstr", size=(40, 40))),
              "the next device key, RFC 3394-wrapped under the current one (SPEC §11: "
              "edgepay device rekey); result data {kv, proof}"),
    "set_release_keys": ((_a(1, "list", "bstr", size=(1, 512)),),
                         "a signed release key list (SPEC §10: edgepay release keylist, push-keys); result data {v, keys}"),
    "set_ca": ((_a(1, "ca", "bstr", size=(1, 512)), _a(2, "retire", "bool", False)),
               "the broker's next CA (DER), trusted beside the current one; with retire, the only one: tried "
               "on a new connection, kept once the broker took it (event ca_current), else both again after three "
               "refused connects (event ca_refused); busy while another trial runs (docs/broker.md); result data {ca}"),
    "set_cert": ((_a(1, "cert", "bstr", size=(1, 512)), _a(2, "wrapped", "bstr", size=(40, 40))),
                 "a renewed TLS certificate (DER) and its private scalar RFC 3394-wrapped under the device key "
                 "(SPEC §12: edgepay device renew-cert); result data {st: staged}, then event cert_current or cert_refused"),
}

# Commands that act on the world: open a barrier, door or slot (open, paid, a granted auth), end a
# customer's session, restart the device. The HTTP API sends one only with an explicit confirmation.
ACTUATING = frozenset({"open", "paid", "auth", "cancel_session", "reboot", "ota"})  # ota: ends in a reboot


class ArgProblem(ValueError):
    """What is wrong with a command or its arguments, in words that say what is valid."""


def help_table() -> str:
    """The commands and their arguments for `edgepay cmd --help` (key?: optional)."""
    lines = ["\b", "Commands (KEY=VALUE by number or name; ? optional; SPEC.md §4):"]
    w = max(len(n) for n in COMMANDS) + 2   # the longest name (set_release_keys) still gets its space
    for name, (args, what) in COMMANDS.items():
        sig = "NAME=VALUE..." if args is None else " ".join(a.label() for a in args) or "(none)"
        lines.append(f"  {name:<{w}}{sig}")
        lines.append(f"  {'':<{w}}  {what}")
    return "\n".join(lines)


def check(name: str, args: dict | None) -> dict | None:
    """The args with names mapped to their integer keys and bytes decoded; ArgProblem otherwise."""
    if name not in COMMANDS:
        close = [n for n in COMMANDS if _near(name, n)]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ArgProblem(f"unknown command {name!r}{hint}: one of {', '.join(COMMANDS)} "
                         "(--unchecked sends it anyway)")
    spec, _ = COMMANDS[name]
    if spec is None:  # set_config: free text keys
        if args and any(not isinstance(k, str) for k in args):
            raise ArgProblem(f"{name} takes settings by name (e.g. hb_s=60), not integer keys")
        return args
    by_key = {a.key: a for a in spec}
    by_name = {a.name: a for a in spec}
    out: dict[Any, Any] = {}
    for k, v in (args or {}).items():
        a = by_key.get(k) if isinstance(k, int) else by_name.get(k)
        if a is None:
            valid = " ".join(a.label() for a in spec) or "none"
            raise ArgProblem(f"{name} has no argument {k!r}: its arguments are {valid}")
        if a.key in out:
            raise ArgProblem(f"{name}: argument {a.label()} given twice")
        out[a.key] = _value(name, a, v)
    missing = [a.label() for a in spec if a.required and a.key not in out]
    if missing:
        raise ArgProblem(f"{name} needs {' '.join(missing)} "
                         f"(e.g. edgepay cmd DEVICE {name} {' '.join(f'{a.key}=…' for a in spec if a.required)})")
    return out or None


def _value(name: str, a: Arg, v: Any) -> Any:
    ok = {"uint": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "tstr": isinstance(v, str),
          "bool": isinstance(v, bool),
          "cur": isinstance(v, str) and bool(_CUR.fullmatch(v)),
          "list": isinstance(v, list),
          "bstr": isinstance(v, (bytes, bytearray))
          or (isinstance(v, str) and bool(re.fullmatch(r"([0-9a-fA-F]{2})+", v)))}[a.kind]
    if a.kind == "tstr" and isinstance(v, int) and not isinstance(v, bool):
        v, ok = str(v), True  # `sid=42` meant the text 42
    if not ok:
        raise ArgProblem(f"{name}: {a.label()} must be {TYPES[a.kind]}, not {v!r}")
    if a.kind == "bstr":
        v = bytes.fromhex(v) if isinstance(v, str) else bytes(v)
        if a.size and not a.size[0] <= len(v) <= a.size[1]:
            want = str(a.size[0]) if a.size[0] == a.size[1] else f"{a.size[0]}-{a.size[1]}"
            raise ArgProblem(f"{name}: {a.label()} must be {want} bytes, not {len(v)}")
        return v
    if a.size and isinstance(v, str) and not a.size[0] <= len(v.encode()) <= a.size[1]:
        raise ArgProblem(f"{name}: {a.label()} must be {a.size[0]}-{a.size[1]} bytes of text, not {len(v.encode())}")
    return v


def _near(a: str, b: str) -> bool:
    """One edit apart (a typo), or one contains the other."""
    if a in b or b in a:
        return True
    if abs(len(a) - len(b)) > 1:
        return len(a) == len(b) and sorted(a) == sorted(b)
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    s, t = (a, b) if len(a) < len(b) else (b, a)
    return any(s == t[:i] + t[i + 1:] for i in range(len(t)))
