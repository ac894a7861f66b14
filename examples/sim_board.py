"""Run a provisioned device on the MicroPython VM, as a board would run it.

CONFIG is the config.json `edgepay provision DEVICE --board sim-...` wrote; FLASH_DIR stands in for
the board's flash (config.json is copied there, with the board.json beside it that the config's
board section stamps; its flash.bin, littlefs with the journal and the
device's state, survives restarts: `python -m host_tools.sim.flashfs FLASH_DIR` lists that state).
The board's peripherals run detached: actuations are only logged. A `reboot` command restarts it.
Ctrl-C, SIGTERM or SIGHUP stop it cleanly (offline status, then DISCONNECT); if this process is
killed outright, the VM dies with it (host_tools/sim/board.py).

    .venv/bin/python examples/sim_board.py edgepay/devices/gate-001/config.json edgepay/sim/gate-001
"""
import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from host_tools.boardcheck import device_board
from host_tools.sim.board import SimBoard


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # the clean stop below, as for Ctrl-C


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("flash_dir")
    ap.add_argument("--seconds", type=float, help="stop after this long (default: run until Ctrl-C)")
    args = ap.parse_args()
    cfg = json.load(open(args.config))
    bdef = device_board(Path(args.config).parent, cfg) or {}  # board.json beside the config
    if not bdef.get("sim"):
        sys.exit("not a sim board: provision the device with --board sim-gate / sim-vending / sim-rental")
    heap = bdef.get("heap_kb", 64)
    if "sha256" in cfg.get("board", {}):
        cfg["board"] = bdef  # SimBoard checks it again and writes it, stamped, beside the config
    board = SimBoard(args.flash_dir, cfg, heapsize=f"{heap}K", echo=True).start()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while True:
            try:
                board.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # --seconds elapsed
                break
            if board.exit_reason() != "reboot":  # a `reboot` command: restart, as a board would
                break
            board.restart()
    except KeyboardInterrupt:
        pass
    board.stop()
    print(f"board exited: {board.exit_reason()}")
    return 0 if board.exit_reason() == "stopped" else 1


if __name__ == "__main__":
    sys.exit(main())
