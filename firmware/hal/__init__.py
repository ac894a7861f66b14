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
