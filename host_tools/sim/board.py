"""One simulated board: `micropython -X heapsize=…` running firmware/main.py in a directory that
stands in for its flash, exactly as a board would run it. The firmware is not imported here: it
runs in its own process, and the host sees only its MQTT traffic, its log and its exit.

Exit codes of the VM (see firmware/hal/reset.py): 0 clean stop, 3 bad config or board file,
4 reboot requested. A watchdog reset kills the VM with SIGUSR2 (there is no os._exit in the VM).
The simulator plays the reset-cause register: before a restart it writes `.reset_cause`.

A VM ends with the process that started it, however that process ends (SIGKILL included): on
Linux it runs under `setpriv --pdeathsig KILL`, and is forked from one long-lived spawner thread,
because the kernel sends the death signal when the forking *thread* ends (boards are booted from
short-lived threads by host_tools/sim/world.py). Otherwise a killed host left a VM heartbeating
but deaf: nobody read its console, and a full pipe blocks it.
Everything the device writes lives in the directory's `flash.bin` (littlefs: the journal's region,
then the main filesystem with store.py's files; then the update slots); read those with `state()`
(host_tools/sim/flashfs.py). Before each boot the simulated boot loader (host_tools/sim/bootloader.py)
picks factory (the compiled bundle) or an update slot, extracted under `.slot/`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from host_tools.boardcheck import device_board, stamped
from host_tools.build import code_allowance, compile_firmware, micropython
from host_tools.bundle import board_bundle
from host_tools.sim.bootloader import boot as boot_slot

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"

EXIT_OK, EXIT_CONFIG, EXIT_REBOOT = 0, 3, 4
WATCHDOG_SIGNAL = signal.SIGUSR2


_spawner: list = []  # the one spawner, made on first use
_spawner_lock = threading.Lock()


def die_with_parent_prefix() -> list[str]:
    """The command prefix that gives a VM the death signal of its parent (Linux util-linux setpriv)."""
    if sys.platform.startswith("linux"):
        tool = shutil.which("setpriv")
        if tool:
            return [tool, "--pdeathsig", "KILL"]
    return []


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    """Popen from the spawner thread, which lives as long as this process (see the docstring)."""
    with _spawner_lock:
        if not _spawner:
            _spawner.append(ThreadPoolExecutor(1, thread_name_prefix="simboard-spawn"))
    return _spawner[0].submit(subprocess.Popen, [*die_with_parent_prefix(), *argv], **kw).result()


def parse_size(s: str | int) -> int:
    if isinstance(s, int):
        return s
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1:], 1)
    return int(s.rstrip("KM")) * mult


def vm_heapsize(budget: str | int, bundle: Path) -> int:
    """The VM heap for a board whose RAM budget for data is `budget`.

    On a board the firmware is frozen into flash; on the VM its code sits in the heap. So the VM
    gets the budget plus the code's measured residency, and the budget is what data may use.
    """
    return parse_size(budget) + code_allowance(bundle)


class SimBoard:
    def __init__(self, workdir: str | Path, config: dict | None = None, heapsize: str | int = "64K",
                 firmware: Path = FIRMWARE, echo: bool = False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            self.write_config(config)
        self.heapsize = heapsize  # the board's RAM budget for data; code is frozen on a board
        self.vm_heap = 0
        self.firmware = Path(firmware)
        self.echo = echo
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.boots = 0
        self.booted: str | None = None  # what the boot loader booted last: "factory", "ota_0", "ota_1"

    def write_config(self, config: dict) -> None:
        """config.json as the host provisions it: a whole board definition in its "board" section
        is checked in full and goes to board.json, the section keeping its stamp (boardcheck.py;
        BoardError, a ValueError, for a board the host refuses: nothing is written then)."""
        (self.dir / "config.json").write_text(json.dumps(stamped(config, self.dir)))

    def definition(self) -> dict | None:
        """The whole board this one runs on (board.json, or a legacy config section), as written."""
        return device_board(self.dir)

    def flash_config(self) -> dict:
        """The board's flash config (its board's "flash"; {} when it has none): the boot
        loader's layout (host_tools/sim/bootloader.py)."""
        fc = (self.definition() or {}).get("flash")
        return fc if isinstance(fc, dict) else {}

    def arm_power_cut(self, at_op: int, tear: int | None = None) -> None:
        """Cut the board's power at its `at_op`-th flash program/erase of the next boot; with `tear`,
        only that many bytes of the fatal write land (a torn write)."""
        (self.dir / "flash.cut").write_text(f"{at_op} {tear}" if tear is not None else str(at_op))

    # -- life cycle
    def start(self, reset_cause: str | None = None) -> "SimBoard":
        if self.proc and self.proc.poll() is None:
            raise RuntimeError("board already running")
        if reset_cause:
            (self.dir / ".reset_cause").write_text(reset_cause)
        env = dict(os.environ)
        # The compiled bundle, as a board runs it; the board's own directory (its flash) after it.
        bundle = compile_firmware(self.firmware)
        board = self.definition()  # a sim board definition: only the modules that board carries, as a real one
        if isinstance(board, dict) and board.get("sim"):
            bundle = board_bundle(bundle, board, self.firmware) or bundle
        # The boot loader (SPEC §10 "Slots"): an update slot it boots replaces the factory bundle.
        booted = boot_slot(self.dir, self.flash_config())
        self.booted = booted.slot
        if booted.dir is not None:
            bundle = booted.dir
        env["MICROPYPATH"] = f"{bundle}:.frozen:"
        self.vm_heap = vm_heapsize(self.heapsize, bundle)
        self.proc = spawn(
            [micropython(), "-X", f"heapsize={self.vm_heap}", "-m", "main"],
            cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.boots += 1
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with open(self.dir / "console.log", "a") as log:
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                if self.echo:
                    print(f"[{self.dir.name}] {line}", flush=True)
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> int | None:
        """A clean stop: SIGINT, which the firmware turns into an orderly offline + disconnect."""
        if not self.running:
            return self.returncode
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._join()
        return self.proc.returncode

    def kill(self) -> None:
        """A power cut: SIGKILL, nothing gets to run."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self._join()

    def restart(self, timeout: float = 10.0) -> "SimBoard":
        """Restart after whatever ended the last run, with the matching reset cause."""
        cause = self.exit_reason()
        if self.running:
            self.kill()
            cause = "power_on"
        return self.start(reset_cause={"watchdog": "watchdog", "reboot": "soft"}.get(cause or "", "power_on"))

    def _join(self) -> None:
        if self._reader:
            self._reader.join(timeout=5)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self._join()
        return rc

    # -- observation
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def exit_reason(self) -> str | None:
        rc = self.returncode
        if rc is None:
            return None
        return {EXIT_OK: "stopped", EXIT_CONFIG: "config", EXIT_REBOOT: "reboot",
                -WATCHDOG_SIGNAL: "watchdog", -signal.SIGKILL: "killed"}.get(rc, f"exit {rc}")

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait for a log line matching `pattern` (regex), looking from line index `start`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None and self._reader
                                 and not self._reader.is_alive()):
                    raise TimeoutError(f"no log line matching {pattern!r} in {timeout}s; last lines:\n"
                                       + "\n".join(self.lines[-20:]))
                self._cond.wait(min(left, 0.2))

    def state(self, name: str, default=None):
        """A file the device keeps with firmware/store.py ("cmdstate", "boots", "pk/<plate hex>"),
        read from its flash image (host_tools/sim/flashfs.py); `default` when absent."""
        from host_tools.sim.flashfs import read_state
        return read_state(self.dir, name, default)

    def state_files(self) -> dict[str, bytes]:
        """Every file on the board's main filesystem (its flash image), by path."""
        from host_tools.sim.flashfs import read_files
        return read_files(self.dir)

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def __enter__(self) -> "SimBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


class Resetter:
    """Plays the chip's reset for boards run outside a World (tests, benches): a VM that exits 4
    (its firmware asked for a reboot: an update's install, a trial that failed) starts again with
    reset cause "soft". Any other end (a kill, a clean stop, a bad config) stays down."""

    def __init__(self, boards: list[SimBoard]):
        self.reboots = 0
        self._stop = False
        self._ts = [threading.Thread(target=self._watch, args=(b,), daemon=True) for b in boards]
        for t in self._ts:
            t.start()

    def _watch(self, b: SimBoard) -> None:
        while not self._stop:
            if b.wait() != EXIT_REBOOT or self._stop:
                return
            self.reboots += 1
            b.start(reset_cause="soft")

    def stop(self) -> None:
        self._stop = True
