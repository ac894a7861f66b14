"""The host's board check, and the stamped board file a device runs on.

A board file (boards/*.json) is checked here in full, and only here: boards/schema.json (jsonschema)
and the rules a JSON Schema cannot say (below), before `build`, `provision`, `flash` and every
simulated board (host_tools/sim/board.py) put it on a device. The device does not re-check the
rules: the host writes the checked board's device form as board.json beside config.json (exact
bytes: `device_bytes`) and stamps config.json's "board" section with their SHA-256
(`{"name", "kind", "sha256"}`); firmware/board.py checks that stamp at boot and refuses a board file
that is not byte for byte the one checked here (edited, unstamped, not JSON).

The rules beyond the schema:
- no pin used twice (pin, pins, dout/sck, uart tx/rx, i2c sda/scl, in that order);
- the journal fits its flash region (at most half of it);
- a rental board has per-slot `lock` and `input` groups;
- the flash layout: a journal given as `start`/`len` (an RP2040 `rp2.Flash` region inside
  MicroPython's storage area) must lie outside the board's declared main filesystem `fs`, and
  inside the storage area when the board gives its size. A stock RP2040 image mounts the whole
  storage area as `/`, so a `start`/`len` board must declare the `fs` its image mounts.

They run after boards/schema.json has passed, but are defensive about types.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "boards" / "schema.json"
FILE = "board.json"  # the board file on the device, beside config.json
KINDS = ("gate", "vending", "rental")

PIN_SUBKEYS = ("tx", "rx", "sda", "scl")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pins(p: dict) -> list[Any]:
    """A peripheral's pins: pin, pins, dout/sck, then uart/i2c tx, rx, sda, scl."""
    out = []
    if "pin" in p:
        out.append(p["pin"])
    if isinstance(p.get("pins"), list):
        out += p["pins"]
    out += [p[k] for k in ("dout", "sck") if k in p]
    for k in ("uart", "i2c"):
        sub = p.get(k)
        if isinstance(sub, dict):
            out += [sub[r] for r in PIN_SUBKEYS if r in sub]
    return out


def pin_rule(board: dict) -> list[str]:
    used: dict[int, str] = {}
    for name, p in (board.get("peripherals") or {}).items():
        if not isinstance(p, dict):
            continue
        for v in _pins(p):
            if not _int(v):
                continue
            if v in used:
                return [f"peripheral '{name}' pin {v} already used by '{used[v]}'"]
            used[v] = name
    return []


def journal_rule(board: dict) -> list[str]:
    fl, j = board.get("flash"), board.get("journal")
    if not isinstance(fl, dict) or not isinstance(j, dict) or not _int(j.get("capacity")):
        return []
    region = fl["blocks"] * fl.get("block_size", 4096) if _int(fl.get("blocks")) else fl.get("len")
    if _int(region) and region and j["capacity"] * 2 > region:
        return ["journal 'capacity' does not fit its flash region (at most half of it)"]
    return []


def rental_rule(board: dict) -> list[str]:
    if board.get("slots") is None:
        return []
    groups = {p.get("type") for p in (board.get("peripherals") or {}).values()
              if isinstance(p, dict) and "pins" in p}
    for t in ("lock", "input"):
        if t not in groups:
            return [f"a rental board needs a per-slot '{t}' group ('pins' with one pin per slot)"]
    return []


def layout_rule(board: dict) -> list[str]:
    fl, fs = board.get("flash"), board.get("fs")
    region = isinstance(fl, dict) and _int(fl.get("start")) and _int(fl.get("len"))
    if fs is None:
        if region:
            return ["flash 'start'/'len': needs 'fs', the main filesystem the board's image mounts "
                    "(a stock RP2040 image mounts the whole storage area, over the journal)"]
        return []
    if not region:
        return ["'fs' is for boards whose journal is a 'start'/'len' flash region"]
    if not isinstance(fs, dict) or not _int(fs.get("start")) or not _int(fs.get("len")):
        return ["'fs' needs integer 'start' and 'len'"]
    assert isinstance(fl, dict)
    j0, j1 = fl["start"], fl["start"] + fl["len"]
    f0, f1 = fs["start"], fs["start"] + fs["len"]
    if j0 < f1 and f0 < j1:
        return [f"flash region {j0}..{j1} overlaps the main filesystem 'fs' {f0}..{f1}"]
    storage = fs.get("storage")
    if _int(storage) and max(j1, f1) > storage:
        return [f"flash region {j0}..{j1} or 'fs' {f0}..{f1} ends past the storage area ({storage} bytes)"]
    return []


def check(board: dict) -> list[str]:
    """Problems beyond the schema; [] for a good board."""
    out: list[str] = []
    for rule in (journal_rule, pin_rule, rental_rule, layout_rule):
        try:
            out += rule(board)
        except (TypeError, KeyError, AttributeError):  # a malformed board the schema would reject
            continue
    return out


class BoardError(ValueError):
    """A board the host refuses to put on a device (its first problem)."""


def schema_problems(board: dict, schema: Path = SCHEMA) -> list[str]:
    """boards/schema.json's verdict (at most 3 problems). The device no longer checks the rules,
    so this fails closed: without jsonschema, or with an unreadable schema, nothing passes."""
    try:
        import jsonschema
        from jsonschema.exceptions import best_match
    except ImportError:
        return ["jsonschema is not installed, so the board cannot be checked (pip install jsonschema)"]
    try:
        v = jsonschema.Draft202012Validator(json.loads(schema.read_text()))
        errs = sorted(v.iter_errors(board), key=lambda e: list(e.path))
    except Exception as e:  # noqa: BLE001 - a schema being edited: refuse, never pass unchecked
        return [f"{schema} is not a usable schema: {e}"[:300]]
    out = []
    for e in errs[:3]:
        if e.context:  # oneOf/anyOf: the branch that came closest says what is missing
            e = best_match(e.context) or e
        out.append(f"{'/'.join(str(x) for x in e.absolute_path) or '(top)'}: {e.message[:200]}")
    return out


def check_board(board: Any) -> list[str]:
    """The full check: the fields the tools rely on, boards/schema.json, then the rules above."""
    if not isinstance(board, dict):
        return ["a board definition is a JSON object"]
    out = []
    kind = board.get("kind")
    if kind not in KINDS:
        out.append(f"'kind' must be gate, vending or rental, not {kind!r}")
    if not isinstance(board.get("name"), str):
        out.append("'name' is missing")
    if not out:
        out += schema_problems(board)
    if not out:
        out += check(board)
    return out


def is_definition(section: Any) -> bool:
    """A whole board definition (a board file), not a config's {"name", "kind"[, "sha256"]} section."""
    return isinstance(section, dict) and ("mcu" in section or "peripherals" in section)


def device_form(board: dict) -> dict:
    """What the device reads: documentation (`description`, a peripheral's `note`) and the
    host-only layout `fs` dropped (not worth the device's RAM)."""
    out = {k: v for k, v in board.items() if k not in ("description", "fs")}
    ps = out.get("peripherals")
    if isinstance(ps, dict):
        out["peripherals"] = {n: ({k: v for k, v in p.items() if k != "note"} if isinstance(p, dict) else p)
                              for n, p in ps.items()}
    return out


def device_bytes(board: dict) -> bytes:
    """The exact bytes of board.json for `board` (checked in full first: BoardError otherwise)."""
    problems = check_board(board)
    if problems:
        raise BoardError(f"board {board.get('name') if isinstance(board, dict) else '?'}: {problems[0]}")
    return json.dumps(device_form(board), sort_keys=True, separators=(",", ":")).encode()


def stamp_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def section(board: dict, data: bytes) -> dict:
    """config.json's "board" section for the board file `data`: what the device checks it against."""
    return {"name": board["name"], "kind": board["kind"], "sha256": stamp_of(data)}


def stamped(config: dict, where: Path) -> dict:
    """`config` as a device in directory `where` keeps it: a whole board definition in its "board"
    section is checked, written to where/board.json and replaced by its stamp (a copy; `config`
    is untouched). A config with a {"name", "kind"} section drops a stale board.json."""
    board = config.get("board") if isinstance(config, dict) else None
    if not is_definition(board):
        if not (isinstance(board, dict) and "sha256" in board):
            (Path(where) / FILE).unlink(missing_ok=True)
        return config
    assert isinstance(board, dict)
    data = device_bytes(board)
    (Path(where) / FILE).write_bytes(data)
    return dict(config, board=section(board, data))


def device_board(where: Path, config: dict | None = None) -> dict | None:
    """The whole board a device in directory `where` runs on, as the host reads it back: board.json
    when its config is stamped, else the config's own "board" section; None when unreadable."""
    try:
        if config is None:
            config = json.loads((Path(where) / "config.json").read_text())
        b = config.get("board")  # type: ignore[union-attr]
        if isinstance(b, dict) and "sha256" in b:
            b = json.loads((Path(where) / FILE).read_bytes())
    except (OSError, ValueError, AttributeError):
        return None
    return b if isinstance(b, dict) else None
