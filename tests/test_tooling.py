"""The repository's own entry points as a new user meets them (issue 11 §3): `make bench` runs
benchmarks only, `make setup` says what it is doing, bench/app_heap.py reports progress."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_make_bench_runs_benchmarks_not_helpers():
    p = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    recipe = next(ln for ln in p.stdout.splitlines() if "for f in" in ln)
    glob = re.search(r"for f in (\S+);", recipe).group(1)
    files = subprocess.run(["bash", "-c", f"echo {glob}"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    names = {Path(f).name for f in files}
    assert "firmware_size.py" in names and "app_heap.py" in names
    assert not [n for n in names if n.startswith("_")], names  # bench/_kit.py is a helper


def test_setup_says_what_it_does_before_each_slow_step():
    """Every pip install and apt-get in scripts/setup.sh comes after an `echo "setup: ..."` line
    (the script itself is not run here: .venv is shared)."""
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    slow = [i for i, ln in enumerate(lines) if re.search(r"pip install|apt-get (update|install)|-m venv", ln)
            and not ln.lstrip().startswith("#") and "echo" not in ln]
    assert len(slow) >= 4
    for i in slow:
        before = [ln for ln in lines[max(0, i - 4):i] if 'echo "setup:' in ln]
        assert before, f"scripts/setup.sh line {i + 1} runs silently: {lines[i].strip()}"
    assert sum('echo "setup:' in ln for ln in lines) >= 8


@pytest.mark.skipif(os.environ.get("EDGEPAY_BENCH_TESTS") != "1", reason="boots three VMs twice (~1 min): EDGEPAY_BENCH_TESTS=1")
def test_app_heap_progress_on_stderr_and_expected_failures_plain():
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGEPAY_APP_HEAP_N="10", EDGEPAY_APP_HEAP_SHORT_N="5",
               EDGEPAY_APP_HEAP_LEVELS="16", EDGEPAY_BENCH_PROGRESS_S="2")
    p = subprocess.run([sys.executable, "bench/app_heap.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("app_heap: ") >= 3, p.stderr  # the budget lines and progress
    assert "Error(" not in p.stderr and "Traceback" not in p.stderr, p.stderr  # no repr, no traceback
    assert "expected" in p.stderr  # 16K is below every app's floor: the search's end, said plainly
