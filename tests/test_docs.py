"""The docs cannot drift from the tools: every `edgepay ...` line in a ```sh block of README.md and
docs/*.md names a command that exists, with options it has; every repository path the docs cite
exists (and none outside the repository); the bundle figures in docs/flashing.md are the build's."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from host_tools.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def sh_commands(text: str) -> list[str]:
    """Each shell command in ```sh blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #", 1)[0].strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def edgepay_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for cmd in sh_commands(doc.read_text()):
            for part in re.split(r"&&|\|", cmd):
                try:
                    toks = shlex.split(part)
                except ValueError:
                    continue
                toks = [t for t in toks if "=" not in t or t.startswith("-")]  # VAR=x prefixes
                if toks and Path(toks[0]).name == "edgepay":
                    found.append((f"{doc.name}: {part.strip()}", toks[1:]))
    return found


def _options(cmd: click.Command) -> dict[str, click.Parameter]:
    out = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for name in (*p.opts, *p.secondary_opts):
                out[name] = p
    return out


def resolve(args: list[str]) -> tuple[list[str], list[str]]:
    """(the command path, problems) for `edgepay ARGS`: subcommands walked, options checked."""
    cmd: click.Command = cli
    path: list[str] = []
    problems: list[str] = []
    opts = _options(cmd) | {"--help": None, "-h": None, "--version": None}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and a != "-":
            name = a.split("=", 1)[0]
            if name not in opts:
                problems.append(f"{' '.join(['edgepay', *path])} has no option {name}")
            p = opts.get(name)
            takes_value = isinstance(p, click.Option) and not p.is_flag and not p.count and "=" not in a
            i += 2 if takes_value else 1
            continue
        if isinstance(cmd, click.Group):
            sub = cmd.commands.get(a)
            if sub is None:
                problems.append(f"{' '.join(['edgepay', *path])} has no command {a!r}")
                break
            cmd, path = sub, [*path, a]
            opts = opts | _options(cmd)
        i += 1
    return path, problems


INVOCATIONS = edgepay_invocations()


def test_docs_have_edgepay_commands():
    assert len(INVOCATIONS) >= 20, INVOCATIONS  # the extraction itself works
    paths = {tuple(resolve(a)[0]) for _, a in INVOCATIONS}
    for p in [("provision",), ("build",), ("flash",), ("cmd",), ("watch",), ("ledger",), ("broker", "conf"),
              ("time",), ("logs",)]:
        assert p in paths, p


@pytest.mark.parametrize("where,args", INVOCATIONS, ids=[w[:80] for w, _ in INVOCATIONS])
def test_documented_command_exists_with_its_options(where, args):
    path, problems = resolve(args)
    assert not problems, (where, problems)
    # and its --help runs (what a new user types next)
    from click.testing import CliRunner
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output, (where, r.output)


def test_docs_cite_only_paths_that_exist():
    cited = re.compile(r"`((?:firmware|host_tools|tests|bench|examples|protocol|boards|scripts|docs)/[\w./-]+)`")
    for doc in DOCS:
        text = doc.read_text()
        assert "/work/" not in text, f"{doc.name} cites a path outside the repository"
        for m in cited.finditer(text):
            p = m.group(1).rstrip(".")
            if any(c in p for c in "*<>…") or p.endswith("/x.mpy"):
                continue
            assert (ROOT / p).exists() or (ROOT / p).with_suffix("").exists(), f"{doc.name} cites {p}: not in the repository"


def test_flashing_doc_figures_are_the_builds(tmp_path):
    """docs/flashing.md's module count, bundle bytes and file count are esp32-devkitc-gate's build."""
    r = __import__("click.testing", fromlist=["CliRunner"]).CliRunner().invoke(
        cli, ["--json", "build", "--board", "esp32-devkitc-gate", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    bundle = tmp_path / "b" / "bundle"
    mpys = list(bundle.rglob("*.mpy"))
    assert (bundle / "main.py").is_file() and not (bundle / "main.mpy").exists()
    text = (ROOT / "docs" / "flashing.md").read_text()
    m = re.search(r"main\.py and (\d+) compiled modules, ([\d,]+) B", text)
    assert m, "the bundle line in docs/flashing.md"
    assert int(m.group(1)) == len(mpys), (m.group(0), len(mpys))
    mpy_bytes = json.loads(r.stdout)["mpy_bytes"]
    assert abs(int(m.group(2).replace(",", "")) - mpy_bytes) <= 1024, (m.group(0), mpy_bytes)  # within 1 KB
    m = re.search(r"flashed (\d+) files", text)
    assert m and int(m.group(1)) == len(mpys) + 1 + 1 + 1 + 3, m  # + main.py, config.json, board.json, ca/device cert+key (--tls)
    assert "bundle/main.mpy" not in text and "copies `main.mpy`" not in text


def test_quickstart_says_the_demo_exists():
    text = (ROOT / "docs" / "quickstart.md").read_text()
    assert "being added" not in text
    assert "demo" in cli.commands
