"""Every dropped connection closes its socket (issue 10 §6). MicroPython's asyncio Stream.close()
is a no-op: the client left each dropped connection's socket open (CLOSE-WAIT), five after five
refused CONNACKs, until the board ran out. The device agent on the VM against a real Mosquitto:
50 broker restarts and 50 refused connects (wrong password, CONNACK 5), over TCP and over TLS
(the wrapped socket), and the VM process's open file descriptors (/proc/<pid>/fd) stay constant."""
import json
import os
import time

import pytest

from host_tools.broker import Broker
from host_tools.cloud.registry import Registry
from host_tools.tls import write_pki
from tests.agentkit import provision

RESTARTS = REFUSALS = 50
# reconnect fast: the supervisor's backoff is the floor of every cycle here
FASTEST = {"backoff_min_ms": 50, "backoff_max_ms": 100}


def fds(b):
    return len(os.listdir(f"/proc/{b.proc.pid}/fd"))


def settle(b, want, timeout=3.0):
    """The fd count once it is `want` (a close can trail the log line by a loop turn), else the last."""
    deadline = time.monotonic() + timeout
    while True:
        n = fds(b)
        if n <= want or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


@pytest.fixture(params=["tcp", "tls"])
def rig(request, tmp_path):
    tls = request.param == "tls"
    pki = write_pki(tmp_path / "pki") if tls else None
    br = Broker(users={"cloud": "cloud-pw"},
                tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]} if tls else None)
    br.start()
    b = provision(br, Registry(), tmp_path, "dev1", settings=FASTEST, ca_file=pki["ca"] if tls else None)
    yield br, b
    b.kill()
    br.close()


def test_fds_constant_over_broker_restarts_and_refused_connects(rig):
    br, b = rig
    b.start()
    b.wait_for(r"mqtt up", 20)
    time.sleep(0.3)
    base = fds(b)
    counts = []
    t0 = time.monotonic()
    for i in range(RESTARTS):
        mark = len(b.lines)
        br.restart(kill=i % 2 == 1)  # SIGTERM and SIGKILL in turn
        b.wait_for(r"mqtt up", 10, start=mark)
        counts.append(settle(b, base))
    took = time.monotonic() - t0
    print("%d broker restarts in %.1f s: fds %d before, after each %s" % (RESTARTS, took, base, sorted(set(counts))))
    assert counts == [base] * RESTARTS

    # refused: the broker no longer knows the password; CONNACK 5 at every attempt
    mark = len(b.lines)
    br.add_user("dev1", "not-the-devices")
    br.restart()  # drop the live connection too
    deadline = time.monotonic() + 60
    while sum("connack refused" in ln for ln in b.lines[mark:]) < REFUSALS:
        assert time.monotonic() < deadline, b.log()[-2000:]
        assert fds(b) <= base  # at most the one socket of the attempt in progress
        time.sleep(0.05)
    refused = settle(b, base - 1, timeout=0.5)
    print("%d refused connects: fds %d (base %d, no connection)" % (REFUSALS, refused, base))
    assert refused <= base
    # the right password again: back up with the same descriptors as before
    mark = len(b.lines)
    br.add_user("dev1", _password(b))
    b.wait_for(r"mqtt up", 10, start=mark)
    assert settle(b, base) == base


def _password(b):
    return json.loads((b.dir / "config.json").read_text())["broker"]["password"]


def test_fds_constant_over_refused_tls_handshakes(tmp_path):
    """The broker's certificate does not verify: every handshake fails, and its sockets (the TLS
    one and the TCP one under it) are closed each time."""
    pki = write_pki(tmp_path / "pki")
    br = Broker(users={"cloud": "cloud-pw"}, tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]})
    br.start()
    b = provision(br, Registry(), tmp_path, "dev1", settings=FASTEST, ca_file=pki["other-ca"])
    try:
        b.start()

        def refusals():
            return sum("not correctly signed" in ln for ln in b.lines)
        deadline = time.monotonic() + 60
        seen = []
        while refusals() < REFUSALS:
            assert time.monotonic() < deadline, b.log()[-2000:]
            if refusals() >= 5:
                seen.append(fds(b))
            time.sleep(0.05)
        print("%d refused TLS handshakes: fds seen %s" % (REFUSALS, sorted(set(seen))))
        assert seen and max(seen) <= min(seen) + 1  # at most the attempt in progress
        assert "mqtt up" not in b.log()
    finally:
        b.kill()
        br.close()
