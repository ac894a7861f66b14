"""The board simulator: runs the real firmware on the MicroPython VM as a separate process."""
