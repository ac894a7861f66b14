# Hardware abstraction: each module picks the `machine` implementation on a board and a simulated
# one on the unix VM, so the agent and apps above never ask which they run on.
import sys

ON_VM = sys.platform in ("linux", "darwin")


def build(board, loop=None, sim=None):
    """The board's peripherals (see hal/io.py): machine drivers on a board, the simulator link on a
    sim board. Imported on demand so that boot code paying for `hal` pays nothing for this."""
    from hal import io
    return io.build(board, loop, sim)


def connect(host, port):
    """A non-blocking TCP socket connecting to host:port with TCP_NODELAY (else Nagle costs
    ~40-90 ms a round trip): the MQTT client's and the simulator link's."""
    import socket
    from errno import EINPROGRESS
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
    except (OSError, AttributeError):
        pass
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.errno != EINPROGRESS:
            s.close()
            raise
    return s


def rtc_floor(t):
    """Before a TLS connect: an RTC below t (Unix s) is set to t, so that mbedtls, which checks the
    broker certificate's dates against it, is not left in 2000 by a power cut. True if it was set.
    Only the RTC moves: the payment clock (clock.py) stays untrusted until the signed exchange."""
    if ON_VM:  # the unix port's clock is the host's: a test's own RTC (hal/sim.py)
        from hal import sim
        return sim.rtc_floor(t)
    import time
    if time.gmtime(0)[0] == 2000:  # the port's epoch
        t -= 946684800
    if time.time() >= t:
        return False
    import machine
    g = time.gmtime(t)  # (y, mo, d, h, mi, s, wd, yd): the RTC's order is (y, mo, d, wd, h, mi, s, us)
    machine.RTC().datetime((g[0], g[1], g[2], g[6], g[3], g[4], g[5], 0))
    return True


def tls_context(ca_file=None, cadata=None, cert=None, key=None, ca2=None):
    """A TLS client context: verifying the server against the CA (a file or bytes, PEM or DER) when
    one is given; without one, encrypted but not authenticated. cert, key: the device's own
    certificate and key, DER files, for a broker that requires them (mutual TLS). ca2: a second
    CA's DER file trusted beside the first if it exists (a CA rotation: load_verify_locations
    appends to the chain)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = cadata
    if ca is None and ca_file:
        ca = _read(ca_file)
    if ca is not None:
        ctx.load_verify_locations(cadata=pem_to_der(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=_read(ca2))
        except (OSError, TypeError):  # none, or no such file
            pass
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(_read(cert), _read(key))
    return ctx


def _read(name):
    with open(name, "rb") as f:
        return f.read()


def pem_to_der(data):
    """The first certificate of a PEM file as DER (this MicroPython's mbedtls is built without
    PEM parsing: load_verify_locations rejects PEM with "invalid cert"). DER passes through."""
    if data[:1] == b"0":  # DER SEQUENCE
        return data
    import binascii
    i = data.find(b"-----BEGIN CERTIFICATE-----")
    j = data.find(b"-----END CERTIFICATE-----", i)
    if i < 0 or j < 0:
        raise ValueError("no certificate")
    return binascii.a2b_base64(data[i + 27:j].replace(b"\r", b"").replace(b"\n", b""))
