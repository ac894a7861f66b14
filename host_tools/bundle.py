"""Which firmware modules a board needs, compiled with mpy-cross (host_tools/build.py): `edgepay
build`, `edgepay flash`, and each simulated board's own bundle (board_bundle).

The bundle is the import closure (read from the source with `ast`, lazy imports inside functions
included) of `main` and of the board's app (`apps/<kind>.py`, loaded by name at run time, so it is
added by kind), plus `hal/<driver>.py` for each peripheral driver the board names when such a file
exists. Then, by board:
- a real board drops the simulator-only modules (`hal/sim*.py`): they exist for the unix VM;
- a simulated board (`"sim": true`) drops machine-only modules: a `hal/` module that imports
  `machine`, `esp32`, `rp2`... (anywhere, lazily too) and never asks `ON_VM` which side it runs on
  (hal/mach.py); dual modules such as hal/flash.py branch on `ON_VM` and ship everywhere; nor
  the Wi-Fi bring-up `net` (RADIO_MODULES);
- a board without a per-slot group ("pins") drops `hal/group.py`, one without a load cell
  `hal/scale.py` (OPTIONAL: what each is for).
Other apps never ship with a board: a gate carries no vending code.
"""
from __future__ import annotations

import ast
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from host_tools.boardcheck import FILE as BOARD_FILE
from host_tools.boardcheck import device_bytes, is_definition
from host_tools.build import FIRMWARE, compile_firmware, publish

MACHINE_MODULES = {"machine", "esp32", "rp2", "esp", "network", "bluetooth", "neopixel"}
# Wi-Fi bring-up (firmware/net.py): only boards with a radio, i.e. not sim boards (main.py goes on
# without it). Named, not inferred: agent.py also imports `network` (for RSSI) and ships everywhere.
RADIO_MODULES = {"net"}


@dataclass(frozen=True)
class Module:
    name: str       # dotted: "hal.flash"
    source: Path    # firmware/hal/flash.py
    rel: Path       # hal/flash.py

    @property
    def mpy_rel(self) -> Path:
        return self.rel.with_suffix(".mpy")


def firmware_modules(root: Path = FIRMWARE) -> dict[str, Module]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(root)
        parts = rel.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = Module(name, p, rel)
    return out


def _imports(mod: Module, known: dict[str, Module]) -> tuple[set[str], set[str]]:
    """(firmware modules imported anywhere in mod, external modules imported anywhere)."""
    tree = ast.parse(mod.source.read_text(), str(mod.source))
    internal: set[str] = set()
    top_external: set[str] = set()
    pkg = mod.name if mod.rel.name == "__init__.py" else mod.name.rpartition(".")[0]

    def add(name: str, top: bool) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a package's __init__ runs too
            prefix = ".".join(parts[:i])
            if prefix in known:
                internal.add(prefix)
        if parts[0] not in known and top:
            top_external.add(parts[0])

    for node in ast.walk(tree):
        top = True
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, top)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".") if pkg else []
                up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                base = ".".join([*up, base] if base else up)
            add(base, top)
            for a in node.names:  # `from hal import simflash`: a submodule
                if f"{base}.{a.name}" in known:
                    internal.add(f"{base}.{a.name}")
    internal.discard(mod.name)
    return internal, top_external


def is_sim_only(m: Module) -> bool:
    return m.rel.parts[0] == "hal" and m.rel.name.startswith("sim")


def is_machine_only(m: Module, known: dict[str, Module]) -> bool:
    if m.rel.parts[0] != "hal" or m.rel.name == "__init__.py":
        return False
    if "ON_VM" in m.source.read_text():
        return False
    return bool(_imports(m, known)[1] & MACHINE_MODULES)


# interface modules a board carries only when one of its peripherals needs them
OPTIONAL = {"hal.group": lambda p: "pins" in p, "hal.scale": lambda p: p.get("type") == "scale"}


def select(board: dict, root: Path = FIRMWARE) -> list[Module]:
    """The modules `board` needs, sorted by path."""
    known = firmware_modules(root)
    if "main" not in known:
        raise FileNotFoundError(f"{root}/main.py is missing")
    sim = bool(board.get("sim"))
    kind = board.get("kind")

    pers = [p for p in (board.get("peripherals") or {}).values() if isinstance(p, dict)]
    dropped = {m for m, needs in OPTIONAL.items() if not any(needs(p) for p in pers)}

    def wanted(name: str) -> bool:
        m = known[name]
        if name in dropped:
            return False
        if sim and (is_machine_only(m, known) or name in RADIO_MODULES):
            return False
        if not sim and is_sim_only(m):
            return False
        return True

    roots = ["main"]
    if f"apps.{kind}" in known:
        roots.append(f"apps.{kind}")
    for per in (board.get("peripherals") or {}).values():
        drv = per.get("driver") if isinstance(per, dict) else None
        if isinstance(drv, str) and f"hal.{drv}" in known:
            roots.append(f"hal.{drv}")
    seen: set[str] = set()
    todo = [r for r in roots if wanted(r)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        deps, _ = _imports(known[name], known)
        todo.extend(d for d in deps if d not in seen and wanted(d))
    return sorted((known[n] for n in seen), key=lambda m: str(m.rel))


@dataclass
class Bundle:
    board: dict
    out: Path
    modules: list[Module]
    sizes: dict[str, int]  # mpy rel path -> bytes

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def fw_version(root: Path = FIRMWARE) -> str:
    m = re.search(r'^FW_VERSION\s*=\s*"([^"]+)"', (root / "agent.py").read_text(), re.M)
    return m.group(1) if m else "0.0.0"


def build_bundle(board: dict, out: Path, root: Path = FIRMWARE) -> Bundle:
    """Compile and lay out `out/`: bundle/ (.mpy), src/ (the same modules as source),
    manifest.py (freeze them into a MicroPython build), package.json (install them with mip) and,
    for a whole board definition, board.json: the board file checked in full (boardcheck.py;
    BoardError otherwise), which goes on the device's filesystem beside config.json, whose
    "board" section carries its SHA-256 (`edgepay provision`): the device checks that at boot."""
    board_file = device_bytes(board) if is_definition(board) else None
    mods = select(board, root)
    compiled = compile_firmware(root)
    out = Path(out)
    for sub in ("bundle", "src"):
        shutil.rmtree(out / sub, ignore_errors=True)
    sizes: dict[str, int] = {}
    for m in mods:
        # A board runs only main.py (never main.mpy) at boot: ship the 30-line entry point as source.
        rel = m.rel if str(m.rel) == "main.py" else m.mpy_rel
        dst = out / "bundle" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel == m.rel:  # its text is what the board stores: its comments stay in src/
            dst.write_text(code_lines(m.source.read_text()))
        else:
            shutil.copyfile(compiled / m.mpy_rel, dst)
        sizes[str(rel)] = dst.stat().st_size
        src = out / "src" / m.rel
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(m.source, src)
    if board_file is not None:
        (out / BOARD_FILE).write_bytes(board_file)
    (out / "manifest.py").write_text(manifest_text(board, mods))
    (out / "package.json").write_text(package_json(board, mods, root))
    return Bundle(board, out, mods, sizes)


def code_lines(src: str) -> str:
    """Python source less its comment-only and blank lines (main.py ships as source, so every byte
    of it is flash; its comments stay in src/). A line holding any code, or part of a string, stays."""
    import io
    import tokenize
    keep: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in skip:
            keep.update(range(tok.start[0], tok.end[0] + 1))
    return "".join(ln for i, ln in enumerate(src.splitlines(keepends=True), 1) if i in keep)


def manifest_text(board: dict, mods: list[Module]) -> str:
    lines = [
        f"# edgepay firmware for board {board.get('name')} (kind {board.get('kind')}), generated by `edgepay build`.",
        "# Freeze it into a MicroPython build:  make BOARD=... FROZEN_MANIFEST=$PWD/manifest.py",
        "# The port's own manifest comes first (it freezes asyncio, which the agent needs).",
        'include("$(PORT_DIR)/boards/manifest.py")',
        "",
    ]
    top = [m for m in mods if len(m.rel.parts) == 1]
    for m in top:
        lines.append(f'module("{m.rel}", base_path="src")')
    pkgs: dict[str, list[str]] = {}
    for m in mods:
        if len(m.rel.parts) > 1:
            pkgs.setdefault(m.rel.parts[0], []).append("/".join(m.rel.parts[1:]))
    for pkg, files in sorted(pkgs.items()):
        lines.append(f'package("{pkg}", files={sorted(files)!r}, base_path="src")')
    return "\n".join(lines) + "\n"


def package_json(board: dict, mods: list[Module], root: Path = FIRMWARE) -> str:
    import json
    rels = [m.rel if str(m.rel) == "main.py" else m.mpy_rel for m in mods]
    urls = [[str(r), f"bundle/{r}"] for r in rels]
    return json.dumps({"urls": urls, "deps": [], "version": fw_version(root),
                       "board": board.get("name"), "kind": board.get("kind")}, indent=1) + "\n"


def board_modules(board: dict, root: Path = FIRMWARE) -> set[str] | None:
    """The modules a board of this definition carries (its bundle: main, its own app and drivers,
    their imports: select), or None if no bundle can be made for it."""
    try:
        return {m.name for m in select(board, root)}
    except Exception:  # noqa: BLE001 - e.g. a deliberately broken test config
        return None


def board_bundle(bundle: Path, board: dict, root: Path = FIRMWARE) -> Path | None:
    """A directory holding only the compiled modules `board` carries, as its flash would: a sim
    board then imports and holds exactly what the real one does (never another app's code, nor a
    module it lacks). Made once per module set beside `bundle`; None if no bundle can be made."""
    want = board_modules(board, root)
    if want is None:
        return None
    rels = []
    for name in sorted(want):
        parts = name.split(".")
        rel = Path(*parts).with_suffix(".mpy")
        if not (bundle / rel).exists():
            rel = Path(*parts, "__init__.mpy")
        rels.append(rel)
    out = bundle.parent / (bundle.name + "-" + hashlib.sha256(" ".join(map(str, rels)).encode()).hexdigest()[:12])
    if out.exists():
        return out

    def fill(tmp: Path) -> None:
        for rel in rels:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / rel, tmp / rel)
    return publish(out, fill)
