"""Key rotation between the cloud's side (host_tools/cloud/rekey.py) and the real firmware on the
MicroPython VM (SPEC §11), over a real Mosquitto: `rotate` finishes, the device answers under its
new kid and keeps it across a reboot, and the old kid is refused both ways; a record journaled
before the switch is committed once after it (the whole site: ingest, ledger, session service)."""
import os
import time

import pytest

from host_tools.cloud.rekey import rotate
from host_tools.protocol import seal
from host_tools.protocol import topic as topic_for
from tests.agentkit import AgentRig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "firmware", "rekey.py")),
                                reason="the firmware's side of SPEC §11 (firmware/rekey.py) is not in this tree")
DEV = "dev1"


@pytest.fixture
def env(broker, tmp_path):
    rig = AgentRig(broker, tmp_path, serve_time=True, start=True)
    yield rig
    rig.close()


def test_the_cloud_rotates_a_vm_devices_key(env):
    b = env.board(DEV)
    b.wait_for(rf"agent {DEV} boot", 20)
    old = env.reg.get(DEV)
    deadline = time.monotonic() + 20
    while not env.c.send(DEV, "get_state", timeout=5).ok:  # connected and answering
        assert time.monotonic() < deadline, "the device never answered get_state"
    r = rotate(env.c, DEV, timeout=10)
    assert (r.was, r.version) == (1, 2)
    new = env.reg.get(DEV)
    assert new.key != old.key and [(k.version, k.state) for k in env.reg.keys(DEV)] == [(1, "retired"), (2, "current")]
    assert env.c.send(DEV, "get_state", timeout=10).ok  # signed and answered under key 2
    # the old kid is refused by the device now (an unauthenticated refusal: no cti)
    t = topic_for(DEV, "command")
    before = env.c.unattributed_refusals
    msg = {"type": "command", "aud": DEV, "exp": int(time.time()) + 60, "iat": int(time.time()),
           "cti": os.urandom(12), "seq": env.reg.next_seq(DEV), "name": "get_state"}
    env.c.mqtt.publish(t, seal(old.key, old.kid, t, msg), qos=1)
    deadline = time.monotonic() + 10
    while env.c.unattributed_refusals == before:
        assert time.monotonic() < deadline, "no refusal of the old kid"
        time.sleep(0.05)
    # a power cut and a boot: the device still holds key 2
    b.kill()
    b.restart()
    b.wait_for(rf"agent {DEV} boot", 20)
    deadline = time.monotonic() + 20
    while not env.c.send(DEV, "get_state", timeout=5).ok:
        assert time.monotonic() < deadline, "the device did not answer under key 2 after a reboot"
    # rotating again goes on to key 3
    assert rotate(env.c, DEV, timeout=10).version == 3


def test_a_record_journaled_before_the_switch_is_ingested_after_it(site):
    """A vending cabinet's staff `open` is journaled (a sess_close) under key 1 while no ingest
    worker runs; the key rotates; the record, resent unchanged under the retired kid with its seq
    below the switch point, is committed once and acknowledged under key 2 (SPEC §11, §6)."""
    from host_tools.cloud.ingest import IngestWorker
    from host_tools.cloud.mqtt import BrokerSettings
    from host_tools.cloud.registry import envelope_kid
    from tests.agentkit import CLOUD
    b = site.board("vend-1", "vending")
    site.ingest.stop()
    c = site.cmd("vend-1", "open", {1: 0, 3: 1})
    assert c.ok, (c.state, c.code, c.data)
    r = rotate(site.c, "vend-1", timeout=10)
    assert r.version == 2
    switch = site.reg.keys("vend-1")[0].switch_seq
    site.ingest = IngestWorker(site.reg, site.ledger, BrokerSettings("127.0.0.1", site.broker.cloud_port, *CLOUD),
                               hold_ms=0, on_commit=site.svc.on_commit).start()
    recs = site.wait_records("vend-1", 1, timeout=60)
    assert len(recs) == 1 and recs[0].seq < switch and envelope_kid(recs[0].raw) == b"vend-1:1"
    deadline = time.monotonic() + 30
    while True:  # acknowledged under key 2: the device forgets it
        st = site.cmd("vend-1", "get_state")
        if st.ok and st.data.get("jdepth") == 0:
            break
        assert time.monotonic() < deadline, st.data
        time.sleep(1.0)
    assert len(site.records("vend-1")) == 1 and b.running
