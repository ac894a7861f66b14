# HX711 load cell (bit-banged) for a `scale` peripheral with driver "hx711": loaded by that name
# (hal/mach.py Factory.scale), so only a board with a load cell carries it.
import asyncio


class HX711:
    def __init__(self, dout, sck):
        from machine import Pin
        self.dout = Pin(dout, Pin.IN)
        self.sck = Pin(sck, Pin.OUT, value=0)

    def raw(self):
        """One 24-bit two's-complement sample, channel A gain 128 (25 clocks). SCK must not stay
        high over 60 us or the chip powers down: interrupts are off for the ~50 us it takes."""
        import machine
        d, s = self.dout, self.sck
        v = 0
        irq = machine.disable_irq()
        try:
            for _ in range(24):
                s.value(1)
                s.value(0)
                v = (v << 1) | d.value()
            s.value(1)
            s.value(0)
        finally:
            machine.enable_irq(irq)
        return v - 0x1000000 if v & 0x800000 else v

    async def run(self, dev, per_gram, offset, period):
        while True:
            for _ in range(40):  # DOUT low = a sample is ready (10 or 80 per second)
                if not self.dout.value():
                    dev._set(int((self.raw() - offset) / per_gram))
                    break
                await asyncio.sleep_ms(5)
            await asyncio.sleep_ms(period)
