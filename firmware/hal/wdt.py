# Watchdog: if the main loop stops feeding it, the board resets. On a board this is machine.WDT.
# The unix VM has neither machine.WDT nor os._exit, so a thread watches the feed time and has the
# shell signal our own process (SIGUSR2): a distinct death the simulator reports as "watchdog".
import time
from hal import ON_VM


class Watchdog:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.last = time.ticks_ms()
        self._wdt = None
        if not ON_VM:
            import machine
            self._wdt = machine.WDT(timeout=timeout_ms)
        else:
            import _thread
            _thread.start_new_thread(self._watch, ())

    def feed(self):
        self.last = time.ticks_ms()
        if self._wdt:
            self._wdt.feed()

    def _watch(self):
        while True:
            time.sleep_ms(100)
            if time.ticks_diff(time.ticks_ms(), self.last) > self.timeout_ms:
                print("wdt: main loop stalled, resetting")
                import os
                os.system("kill -USR2 $PPID")
                return
