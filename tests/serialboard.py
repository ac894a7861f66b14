"""A fake serial board for `edgepay flash` / `edgepay logs`: the real MicroPython unix VM running
its REPL on a pseudo-terminal, behind a second pty whose path stands in for /dev/ttyUSB0.

Why two ptys: mpremote must open a *path* and be the other end of the line from the VM. The VM sits
on the slave side of pty A; mpremote opens the slave side of pty B; this relay copies bytes between
the two masters (what `socat PTY,link=... EXEC:micropython,pty` would do).

What the unix port does by itself: the friendly REPL, raw REPL (Ctrl-A) and raw-paste mode
(`\\x05A\\x01` answers `R\\x01`), so mpremote's own file protocol (exec of open/write, hashing)
runs unchanged. What it cannot do, and the relay plays instead, is a board's soft reset: Ctrl-D on
an empty raw-REPL line (or at the `>>>` prompt) is end-of-input to the unix VM, which exits. A
board instead prints "soft reboot", restarts its interpreter with fresh RAM, keeps its flash, and
(in raw REPL) returns to the raw REPL, or (at the friendly REPL) runs main.py then the REPL. The
relay does the same by restarting the VM process: flash is the board's directory (the VM's cwd,
first on its module path), RAM is the new process. Ctrl-C while main.py runs becomes SIGINT (the
VM's KeyboardInterrupt), as a UART Ctrl-C interrupts a running program on a board.
"""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

BANNER_END = b">>> "
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


def _micropython() -> str:
    exe = Path(sys.executable).parent / "micropython"
    return str(exe) if exe.exists() else "micropython"


def _read(fd: int) -> bytes:
    """What a pty side has, or b"" once it is closed (an EIO from a pty means its other end went)."""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


class FakeSerialBoard:
    def __init__(self, flash_dir: str | Path, heapsize: str = "2M"):
        self.dir = Path(flash_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.heapsize = heapsize
        self.host_m, self.host_s = pty.openpty()
        tty.setraw(self.host_m)
        tty.setraw(self.host_s)
        self.port = os.ttyname(self.host_s)
        self.proc: subprocess.Popen | None = None
        self.vm_m: int | None = None
        self.raw = False          # the host put the REPL in raw mode (Ctrl-A) and not back (Ctrl-B)
        self.running_main = False
        self.boots = 0
        self.transcript = bytearray()  # everything the board wrote to the host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = bytearray()    # host bytes held while the VM restarts

    # ---- the VM ---------------------------------------------------------------------------
    def _spawn(self, run_main: bool) -> None:
        m, s = pty.openpty()
        tty.setraw(s)
        argv = [_micropython(), "-X", f"heapsize={self.heapsize}"]
        has_main = (self.dir / "main.py").exists()  # as on a board: main.mpy would not run at boot
        self.running_main = run_main and has_main
        if self.running_main:
            argv += ["-i", "-m", "main"]
        env = dict(os.environ, MICROPYPATH=":.frozen")  # "" = the cwd = the board's flash, first
        self.proc = subprocess.Popen(argv, stdin=s, stdout=s, stderr=s, cwd=self.dir, env=env,
                                     close_fds=True, start_new_session=True)
        os.close(s)
        self.vm_m = m
        self.boots += 1

    def _wait_for(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read the new VM's output up to `marker` (its banner and prompt), not passing it on."""
        assert self.vm_m is not None
        out = b""
        end = time.monotonic() + timeout
        while marker not in out and time.monotonic() < end:
            r, _, _ = select.select([self.vm_m], [], [], 0.1)
            if r:
                try:
                    out += os.read(self.vm_m, 4096)
                except OSError:
                    break
        return out

    def _to_host(self, data: bytes) -> None:
        self.transcript += data
        os.write(self.host_m, data)

    def _reboot(self) -> None:
        """The VM exited: play the board's soft reset (or, after main.py, its return to the REPL)."""
        was_main = self.running_main
        if self.vm_m is not None:
            try:  # the last words of the old VM
                while select.select([self.vm_m], [], [], 0)[0]:
                    data = os.read(self.vm_m, 4096)
                    if not data:
                        break
                    self._to_host(data)
            except OSError:
                pass
            os.close(self.vm_m)
            self.vm_m = None
        if was_main and not self.raw:
            # main.py ended (or was interrupted): a board drops to its REPL, no reset
            self._spawn(run_main=False)
            return
        self._to_host(b"soft reboot\r\n")
        if self.raw:
            # in raw REPL a board skips main.py and comes back to the raw REPL
            self._spawn(run_main=False)
            self._wait_for(BANNER_END)
            os.write(self.vm_m, b"\x01")  # type: ignore[arg-type]
        else:
            self._spawn(run_main=True)

    # ---- the relay ------------------------------------------------------------------------
    def _host_bytes(self, data: bytes) -> None:
        for b in data:
            if b == 0x01:
                self.raw = True
            elif b == 0x02:
                self.raw = False
        if self.running_main and b"\x03" in data and self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # a UART Ctrl-C interrupts the running program
            data = data.replace(b"\x03", b"")
        if data and self.vm_m is not None:
            os.write(self.vm_m, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None and self.vm_m is not None
            fds = [self.host_m, self.vm_m]
            r, _, _ = select.select(fds, [], [], 0.1)
            if self.vm_m in r:
                data = _read(self.vm_m)
                if data:
                    self._to_host(data)
                else:  # EOF: the VM closed its terminal (it exited)
                    self.proc.wait()
                    if self._stop.is_set():
                        return
                    self._reboot()
                    continue
            if self.host_m in r:
                data = _read(self.host_m)
                if data:
                    self._host_bytes(data)
            if self.proc.poll() is not None and not select.select([self.vm_m], [], [], 0)[0]:
                if self._stop.is_set():
                    return
                self._reboot()

    def start(self, run_main: bool = False) -> "FakeSerialBoard":
        """Power on: the REPL (a board with no main.py), or main.py first with run_main."""
        self._spawn(run_main=run_main)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-serial-board")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        for fd in (self.vm_m, self.host_m, self.host_s):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> "FakeSerialBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual use: python tests/serialboard.py DIR  -> prints the port
    b = FakeSerialBoard(sys.argv[1]).start()
    print(b.port, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        b.stop()
