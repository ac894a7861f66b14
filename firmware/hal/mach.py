# Machine drivers for the HAL (ESP32, ESP32-S3, RP2040): GPIO relays and locks, PWM buzzer,
# debounced GPIO inputs (one polling task for all: no IRQ handler that could allocate), UART
# scanners (lines, or STX/ETX frames of RDM6300-style RFID readers), SSD1306 OLED over I2C (a load
# cell's is hal/hx711.py). `machine` is imported lazily: this module loads on the VM.
import asyncio
import time

MAXSCAN = 64


def _pin_in(n, pull):
    from machine import Pin
    p = {"up": Pin.PULL_UP, "down": Pin.PULL_DOWN}.get(pull)
    return Pin(n, Pin.IN, p) if p is not None else Pin(n, Pin.IN)


class PinOut:
    def __init__(self, n, active_low=False):
        from machine import Pin
        self.inv = 1 if active_low else 0
        self.pin = Pin(n, Pin.OUT, value=self.inv)  # off from the first instant

    def write(self, dev, on):
        self.pin.value(on ^ self.inv)


class PwmOut:
    def __init__(self, n, freq):
        from machine import PWM, Pin
        self.pwm = PWM(Pin(n), freq=freq, duty_u16=0)

    def write(self, dev, on):
        self.pwm.duty_u16(32768 if on else 0)


class SSD1306:
    """128x32 or 128x64 OLED: text in 8x8 characters, wrapped, one frame write per show()."""

    def __init__(self, spec):
        import framebuf
        from machine import I2C, Pin
        c = spec["i2c"]
        self.i2c = I2C(c["id"], sda=Pin(c["sda"]), scl=Pin(c["scl"]), freq=c.get("freq", 400000))
        self.addr = c.get("addr", 60)
        self.w, self.h = spec.get("width", 128), spec.get("height", 64)
        self.buf = bytearray(self.w * self.h // 8 + 1)
        self.buf[0] = 0x40  # Co=0, D/C=1: the rest is display data
        self.fb = framebuf.FrameBuffer(memoryview(self.buf)[1:], self.w, self.h, framebuf.MONO_VLSB)
        self._c = bytearray(2)
        for x in (0xAE, 0x20, 0x00, 0x40, 0xA1, 0xA8, self.h - 1, 0xC8, 0xD3, 0x00,
                  0xDA, 0x02 if self.h == 32 else 0x12, 0xD5, 0x80, 0xD9, 0xF1, 0xDB, 0x30,
                  0x81, 0xCF, 0xA4, 0xA6, 0x8D, 0x14, 0xAF):
            self._cmd(x)

    def _cmd(self, x):
        self._c[0] = 0x80
        self._c[1] = x
        self.i2c.writeto(self.addr, self._c)

    def write(self, dev, text):
        fb = self.fb
        fb.fill(0)
        cols = self.w // 8
        y = 0
        for i in range(0, len(text), cols):
            if y + 8 > self.h:
                break
            fb.text(text[i:i + cols], 0, y, 1)
            y += 8 if self.h == 32 else 10
        for x in (0x21, 0, self.w - 1, 0x22, 0, self.h // 8 - 1):
            self._cmd(x)
        self.i2c.writeto(self.addr, self.buf)


def _uart(u):
    from machine import UART, Pin
    kw = {"baudrate": u["baud"], "rx": Pin(u["rx"])}
    if "tx" in u:
        kw["tx"] = Pin(u["tx"])
    return UART(u["id"], **kw)


async def uart_scanner(dev, u):
    """Scans end at CR/LF (plate cameras, QR scanners) or ETX (RFID frames start with STX)."""
    sr = asyncio.StreamReader(_uart(u))
    buf = bytearray(MAXSCAN)
    tmp = bytearray(16)
    n = 0
    while True:
        k = await sr.readinto(tmp)
        for i in range(k or 0):
            c = tmp[i]
            if c in (10, 13, 3):
                if n:
                    try:
                        dev._got(bytes(buf[:n]).decode())
                    except UnicodeError:
                        pass
                n = 0
            elif c == 2:
                n = 0
            elif n < MAXSCAN:
                buf[n] = c
                n += 1


class Factory:
    """Makes machine drivers for hal.io.build; tasks() are the background readers."""

    def __init__(self):
        self.inputs = []  # [dev, pin, invert, debounce_ms, last raw, since]
        self._tasks = []

    def out(self, spec, pin):
        if spec["driver"] == "pwm":
            return PwmOut(pin, spec.get("freq", 2700))
        return PinOut(pin, spec.get("active") == "low")

    def inp(self, dev, spec, pin):
        p = _pin_in(pin, spec.get("pull"))
        inv = 1 if spec.get("active") == "low" else 0
        dev.value = p.value() ^ inv
        self.inputs.append([dev, p, inv, spec.get("debounce_ms", 20), dev.value, time.ticks_ms()])
        return dev

    def scanner(self, dev, spec):
        self._tasks.append(uart_scanner(dev, spec["uart"]))
        return dev

    def scale(self, dev, spec):
        # the driver's module by its name (hal/hx711.py): only a board with a load cell carries it
        import sys
        m = "hal." + spec["driver"]
        __import__(m)
        hx = sys.modules[m].HX711(spec["dout"], spec["sck"])
        self._tasks.append(hx.run(dev, spec.get("per_gram", 1), spec.get("offset", 0), spec.get("period_ms", 500)))
        return dev

    def display(self, spec):
        return SSD1306(spec) if spec["driver"] == "ssd1306" else None

    def tasks(self):
        t = self._tasks
        if self.inputs:
            t.append(self._poll())
        return t

    async def _poll(self):
        ins = self.inputs
        while True:
            now = time.ticks_ms()
            for e in ins:
                raw = e[1].value() ^ e[2]
                if raw != e[4]:
                    e[4] = raw
                    e[5] = now
                elif raw != e[0].value and time.ticks_diff(now, e[5]) >= e[3]:
                    e[0]._set(raw)
            await asyncio.sleep_ms(10)
