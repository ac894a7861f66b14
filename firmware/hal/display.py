# Display. The simulated one writes to the console log (which the simulator captures) and keeps
# the current text; a board definition can name a real driver later.
import time


class Display:
    def __init__(self):
        self.text = ""
        self.until = 0

    def show(self, text, seconds=0):
        self.text = text
        self.until = time.ticks_add(time.ticks_ms(), seconds * 1000) if seconds else 0
        print("ACT display", repr(text))
