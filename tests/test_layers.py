"""Host layers (DESIGN.md): protocol (codec) <- base tools (build, bundle, broker, tls, provision)
<- cloud <- sim <- cli. Nothing imports a layer above it, and no module imports (at any depth,
function-level imports included) back into itself: a "late" import that dodges a cycle is a piece
living in the wrong layer."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "host_tools"
RANK = {"protocol": 0, "base": 1, "cloud": 2, "sim": 3, "service": 3, "cli": 4}


def _name(p: Path) -> str:
    parts = p.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> str:
    sub = mod.split(".")[1:2]
    return sub[0] if sub and sub[0] in RANK and sub[0] != "base" else "base"


def _walk(node: ast.AST):
    """ast.walk, less `if TYPE_CHECKING:` bodies (annotations only: nothing runs them)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for c in child.orelse for n in [c, *_walk(c)])
            continue
        yield child
        yield from _walk(child)


def imports() -> dict[str, set[str]]:
    """host_tools module -> the host_tools modules it imports anywhere in its body."""
    files = {_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}
    out: dict[str, set[str]] = {}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        got: set[str] = set()
        for node in _walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in files:  # `from host_tools.cloud import x`: the package or x
                    n = n.rpartition(".")[0]
                if n and n != mod and n != "host_tools":
                    got.add(n)
        out[mod] = got
    return out


def test_layers_known():
    assert layer("host_tools.protocol.cbor") == "protocol"
    assert layer("host_tools.cloud.ingest") == "cloud"
    assert layer("host_tools.sim.world") == "sim"
    assert layer("host_tools.cli.provision") == "cli"
    assert layer("host_tools.build") == "base"
    assert layer("host_tools.cli") == "cli"
    assert len(imports()) > 40


def test_no_module_imports_a_layer_above_it():
    bad = [f"{m} ({layer(m)}) imports {d} ({layer(d)})"
           for m, deps in sorted(imports().items()) for d in sorted(deps)
           if RANK[layer(d)] > RANK[layer(m)]]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = imports()
    cycles = []

    def visit(m: str, path: list[str], on: set[str], done: set[str]) -> None:
        on.add(m)
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if d in on:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in done:
                visit(d, path, on, done)
        path.pop()
        on.discard(m)
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [], set(), done)
    assert not cycles, "\n".join(cycles)


# ---- firmware: layers by import rule (README "The house"; not packages: each costs RAM) ----------
FW = ROOT / "firmware"
FW_RANK = {  # a module imports only its own rank or below
    **dict.fromkeys(("cbor", "hmac256", "cose", "msg", "sha512", "ed25519", "mqtt_frame", "journal",
                     "store", "config"), 0),  # codec and primitives
    "hal": 1,                                                    # the board's hardware
    **dict.fromkeys(("mqtt_client", "net", "clock", "commands", "uplink", "release", "ota", "board",
                     "rekey", "certs"), 2),  # services
    "apps": 3,                                                   # payment apps, behind agent.Context
    "agent": 4,                                                  # the composition root
    **dict.fromkeys(("start", "main"), 5),                       # boot
}
APP_IMPORTS = {"apps", "commands", "store"}  # all an app may import of the firmware


def _fw_imports() -> dict[str, set[str]]:
    fw_names = {p.stem for p in FW.glob("*.py")} | {"hal", "apps"}
    out: dict[str, set[str]] = {}
    for p in FW.rglob("*.py"):
        top = p.relative_to(FW).parts[0].removesuffix(".py")
        got = out.setdefault(top, set())
        for n in ast.walk(ast.parse(p.read_text(), str(p))):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module] if isinstance(n, ast.ImportFrom) and n.module else []
            got |= {x.split(".")[0] for x in names if x.split(".")[0] in fw_names}
        got.discard(top)
    return out


def test_every_firmware_module_has_a_layer():
    assert set(_fw_imports()) <= set(FW_RANK), set(_fw_imports()) - set(FW_RANK)


def test_firmware_imports_point_down():
    up = sorted((m, d) for m, ds in _fw_imports().items() for d in ds if FW_RANK[d] > FW_RANK[m])
    assert not up, up


def test_apps_see_only_their_face():
    wide = {d for d in _fw_imports()["apps"] if d not in APP_IMPORTS}
    assert not wide, wide
