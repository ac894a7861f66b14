# The load cell's interface (hal/io.py's others are beside it): apart so that only a board with a
# scale carries it (host_tools/bundle.py).
from hal.io import _Watched


class Scale(_Watched):
    """Load cell: grams (int, None until the first reading); read() awaits a fresh reading."""
    KIND = "scale"

    def __init__(self, name):
        super().__init__(name)
        self.grams = None
        self._raw = None
        self.zero = 0

    @property
    def value(self):
        return self.grams

    def _set(self, g):
        self._raw = g
        g -= self.zero
        if g != self.grams:
            print("SCALE", self.name, g)
        self.grams = g
        self._changed(g)

    def tare(self):
        if self._raw is not None:
            self.zero = self._raw
            self.grams = 0

    async def read(self):
        return await self.changed()
