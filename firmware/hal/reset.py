# Reset cause and reset. On a board these are machine.reset_cause()/machine.reset(); on the VM the
# simulator plays the reset-cause register through the `.reset_cause` file and restarts the process.
import sys
from hal import ON_VM

EXIT_CONFIG = 3   # bad config or board file: stop, do not loop
EXIT_REBOOT = 4   # a requested reboot


def cause():
    if not ON_VM:
        import machine
        c = machine.reset_cause()
        return {getattr(machine, "PWRON_RESET", -1): "power_on", getattr(machine, "HARD_RESET", -2): "hard",
                getattr(machine, "WDT_RESET", -3): "watchdog", getattr(machine, "DEEPSLEEP_RESET", -4): "deepsleep",
                getattr(machine, "SOFT_RESET", -5): "soft"}.get(c, "unknown")
    try:
        import os
        with open(".reset_cause") as f:
            c = f.read().strip()
        os.remove(".reset_cause")
        return c or "unknown"
    except OSError:
        return "power_on"


def reset(code=EXIT_REBOOT):
    if ON_VM:
        sys.exit(code)
    import machine
    machine.reset()


def halt(code=EXIT_CONFIG):
    """Stop (bad config): no fast boot loop. On a board, reset after 10 minutes: a trial release
    whose board check fails then rolls back by itself (SPEC §10), and a flash read that failed once
    is tried again. On the VM, exit with `code`."""
    if ON_VM:
        sys.exit(code)
    import machine
    import time
    time.sleep(600)
    machine.reset()


def power_off():
    """The VM's power cut: SIGKILL our own process, so nothing after this line runs."""
    import os
    os.system("kill -9 $PPID")
