# Display. Every show() is logged (`ACT display 'text'`, which the simulator captures) and the
# current text kept; a driver, if any, puts it on the glass: an SSD1306 over I2C on a board
# (hal/mach.py), the host simulator on a sim board (hal/sim.py). Display() alone logs only.
import time


class Display:
    KIND = "out"

    def __init__(self, name="display", drv=None):
        self.name = name
        self._drv = drv
        self.text = ""
        self.until = 0

    @property
    def state(self):
        return self.text

    def show(self, text, seconds=0):
        self.text = text
        self.until = time.ticks_add(time.ticks_ms(), seconds * 1000) if seconds else 0
        print("ACT", self.name, repr(text))
        if self._drv is not None:
            try:
                self._drv.write(self, text)
            except Exception as e:  # a dead display must not stop a payment flow
                print("display error", repr(e))
