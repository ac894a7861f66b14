"""Firmware size: total .mpy bytes of each board's bundle, bundled exactly as `edgepay build` does
(host_tools/bundle.py: main + the board kind's app + their imports; sim-only modules off real
boards, machine-only modules off simulated ones). Goal: every real board's bundle <= 72 KiB.

The goal is a device's flash, so it is held on the boards that ship (esp32-*, pico-*). A sim board
is its real twin with the machine HAL (hal/mach, net: ~3.4 KB) swapped for the simulator's (hal/sim,
hal/simflash, hal/simota: ~5.1 KB), which never leaves the host; its size is reported, not held.

    .venv/bin/python bench/firmware_size.py

Last line: {"mpy_bytes": <largest bundle>, "largest_real_board": <bytes>, "goal_bytes": 73728,
"within_goal": <largest real board within>, "boards": {name: bytes}, ...}
"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host_tools.bundle import build_bundle  # noqa: E402
from host_tools.cli.common import board_names, load_board  # noqa: E402

GOAL = 72 * 1024  # 60 KiB, 64 with the hostile-traffic issue, 72 with firmware updates (issue 12: the updater, release checks, Ed25519, SHA-512)


def main() -> None:
    boards = {}
    modules = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in board_names():
            board = load_board(name)
            b = build_bundle(board, Path(tmp) / name)
            boards[name] = b.total
            modules[name] = len(b.sizes)
            print(f"{name:24} {board['kind']:8} {'sim' if board.get('sim') else 'board':5} "
                  f"{len(b.sizes):3} modules {b.total:7,} B")
    largest = max(boards, key=lambda n: boards[n])
    real = {n: v for n, v in boards.items() if not load_board(n).get("sim")}
    top_real = max(real.values()) if real else boards[largest]
    print(json.dumps({"mpy_bytes": boards[largest], "largest": largest, "goal_bytes": GOAL,
                      "within_goal": top_real <= GOAL, "goal_on": "real boards", "boards": boards,
                      "modules": modules, "largest_real_board": top_real,
                      "headroom_bytes": GOAL - top_real}))


if __name__ == "__main__":
    main()
