"""A private 3-node RabbitMQ cluster (the distribution's rabbitmq-server 3.10, MQTT plugin) on
loopback, for tests and benches: the other engine of issue 14 §2, beside host_tools/natscluster.py.

    c = RabbitCluster(users={"cloud": "pw", "gate-001": "pw2"}, cloud_users=("cloud",))
    c.start(); c.kill(1); c.restart(1); c.close()

Each node runs from the packaged scripts (/usr/lib/rabbitmq/bin, not the system service) with its
own name (`<name>@localhost`), AMQP, distribution and MQTT ports, config file, mnesia and log dirs,
all in one temp dir whose `.erlang.cookie` (HOME) the nodes and rabbitmqctl share, and its own
epmd on a free port (ERL_EPMD_PORT), so nothing touches the machine's RabbitMQ or port 4369.
Nodes 1 and 2 join node 0 (`rabbitmqctl join_cluster`). Management is off; rabbitmq_mqtt and
rabbitmq_auth_backend_http are enabled in each node's enabled_plugins file (what
`rabbitmq-plugins enable --offline` writes).

Who may do what, as with Mosquitto's ACL (host_tools/broker.py):
- authorization is RabbitMQ's own (the internal database): a device user may publish to
  amq.topic with routing keys `v1.dev.<its name>.up[.…]` and read `v1.dev.<its name>.dn[.…]`
  (topic permissions `^v1\\.dev\\.{username}\\.up(\\..*)?$`: the MQTT plugin maps a topic to a
  routing key, `/` -> `.`, `+` -> `*`), and declare, bind and consume only its own subscription
  queues (`mqtt-subscription-<client id>qos0|qos1`); a cloud user may do anything in vhost `/`.
  Users and permissions go in by `rabbitmqctl import_definitions`, one call for a whole batch.
- authentication is an HTTP backend (rabbitmq_auth_backend_http) served here, in this process
  (`AuthService`): RabbitMQ has no `use_username_as_clientid`, and with its internal passwords
  any device's password may take any client id, which disconnects that client id's device (the
  MQTT plugin registers a client id cluster-wide and kicks the older connection). The HTTP
  backend is told the MQTT client id; the service accepts a device only with its own password and
  client id == its user name (`client_ids=False`: any client id, to show the engine's own way).
  The login is decided before the client id is registered, so the impostor never kicks anyone.
- QoS 1 subscriptions of persistent sessions are quorum queues (`mqtt.durable_queue_type =
  quorum`: Raft, replicated on the three nodes). Not replicated: retained messages (the MQTT
  plugin's retained store is per node, a DETS file) and clean sessions' queues (classic,
  on the node the client is connected to).
"""
from __future__ import annotations

import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from host_tools.broker import BrokerError, _accepts, free_port

__all__ = ["RabbitCluster", "RabbitNode", "AuthService", "rabbit_bin", "device_definitions",
           "DEVICE_WRITE", "DEVICE_READ"]

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
DEVICE_WRITE = r"^v1\.dev\.{username}\.up(\..*)?$"   # topic permissions: the MQTT topic as a routing key
DEVICE_READ = r"^v1\.dev\.{username}\.dn(\..*)?$"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENGINE = "rabbitmq"


def rabbit_bin() -> Path:
    """The packaged scripts (Debian's rabbitmq-server): /usr/sbin's wrappers su to the rabbitmq
    user and use its one node; these run a node as whoever calls them."""
    if not (RABBIT_BIN / "rabbitmq-server").exists() or not shutil.which("erl"):
        raise BrokerError("rabbitmq-server is not installed (apt-get install rabbitmq-server; scripts/setup.sh)")
    return RABBIT_BIN


def device_definitions(name: str) -> tuple[dict, dict]:
    """A device's vhost permissions and topic permissions, as import_definitions takes them."""
    if not _NAME.match(name):
        raise ValueError(f"device id {name!r}: letters, digits, '-' and '_' only")
    q = re.escape(f"mqtt-subscription-{name}") + "qos[01]"
    perms = {"user": name, "vhost": "/", "configure": f"^{q}$",
             "write": rf"^(amq\.topic|{q})$", "read": rf"^(amq\.topic|{q})$"}
    topic = {"user": name, "vhost": "/", "exchange": "amq.topic", "write": DEVICE_WRITE, "read": DEVICE_READ}
    return perms, topic


class AuthService:
    """rabbitmq_auth_backend_http's user_path: POST username, password, vhost and (MQTT) client_id;
    answers `allow` or `deny`. Every node asks it at every login (no cache)."""

    def __init__(self, users: dict[str, str], cloud_users: set[str], client_ids: bool = True):
        self.users = users            # shared with the cluster: read at each request
        self.cloud_users = cloud_users
        self.client_ids = client_ids
        self.refused: list[tuple[str, str]] = []   # (user, client id) refused, for tests
        self.asked = 0
        self.late = 0     # answers the asking node had stopped waiting for
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                q = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(n).decode()).items()}
                ok = self.path == "/auth/user" and svc.decide(q)
                body = b"allow" if ok else b"deny"
                try:
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:   # the node gave up waiting (a connect storm): the device retries
                    svc.late += 1

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def decide(self, q: dict[str, str]) -> bool:
        self.asked += 1
        user, cid = q.get("username", ""), q.get("client_id")
        want = self.users.get(user)
        if want is None or not hmac.compare_digest(want.encode(), q.get("password", "").encode()):
            return False
        if user in self.cloud_users or not self.client_ids or cid is None:
            # cid None: not MQTT (AMQP, the CLI): only cloud users have any permission there
            return user in self.cloud_users or not self.client_ids
        if cid != user:
            self.refused.append((user, cid))
            return False
        return True

    def start(self) -> "AuthService":
        self._thread = threading.Thread(target=self.server.serve_forever, name="rabbit-auth", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()


@dataclass
class RabbitNode:
    name: str
    dir: Path
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        out = []
        for p in (self.dir / "log" / f"{self.node}.log", self.dir / "stdout.log"):
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)


class RabbitCluster:
    engine = ENGINE

    def __init__(self, users: dict[str, str] | None = None, cloud_users=("cloud",), nodes: int = 3,
                 workdir: str | Path | None = None, client_ids: bool = True, quorum: bool = True):
        """client_ids: the auth service holds client id == user name for devices (False: any client
        id, RabbitMQ's own behaviour). quorum: persistent sessions' queues as quorum queues (False:
        classic queues on the node the device first subscribed on)."""
        self.bin = rabbit_bin()
        self.users = dict(users or {})
        self.cloud_users = set(cloud_users)
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edgepay-rabbit-"))
        self.quorum = quorum
        self.epmd_port = free_port()
        self.nodes = [RabbitNode(f"r{i}-{os.urandom(3).hex()}", self.dir / f"n{i}") for i in range(nodes)]
        self.auth = AuthService(self.users, self.cloud_users, client_ids)
        self._imported: set[str] = set()
        self.start_s: float | None = None

    # ---- the Broker-shaped surface (provision_sim, ClusterSite) ----------------------
    @property
    def port(self) -> int:
        return self.nodes[0].mqtt_port

    @property
    def cloud_port(self) -> int:
        return self.nodes[0].mqtt_port

    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    # ---- processes --------------------------------------------------------------------
    def _env(self, n: RabbitNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.dir),                    # its .erlang.cookie, shared by nodes and CLI
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": n.node,
            "RABBITMQ_NODE_PORT": str(n.amqp_port),
            "RABBITMQ_DIST_PORT": str(n.dist_port),
            "RABBITMQ_CONFIG_FILE": str(n.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(n.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(n.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(n.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(n.dir / "log"),
            "RABBITMQ_PID_FILE": str(n.dir / "pid"),
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",   # not /etc/rabbitmq/rabbitmq-env.conf
            "RABBITMQ_ALLOW_INPUT": "1",              # the script execs erl: our pid is beam's
            # no busy-waiting schedulers: the box's 2 cores are shared with 2 more nodes and the fleet
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        })
        return env

    def _write(self, n: RabbitNode) -> None:
        n.dir.mkdir(parents=True, exist_ok=True)
        conf = [
            f"listeners.tcp.default = 127.0.0.1:{n.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{n.mqtt_port}",
            "mqtt.allow_anonymous = false",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = info",
            "auth_backends.1.authn = http",
            "auth_backends.1.authz = internal",
            "auth_http.http_method = post",
            f"auth_http.user_path = http://127.0.0.1:{self.auth.port}/auth/user",
            f"auth_http.vhost_path = http://127.0.0.1:{self.auth.port}/auth/vhost",
            f"auth_http.resource_path = http://127.0.0.1:{self.auth.port}/auth/resource",
            f"auth_http.topic_path = http://127.0.0.1:{self.auth.port}/auth/topic",
            # a node that loses its peers keeps serving those it still has (2 of 3: the quorum side)
            "cluster_partition_handling = pause_minority",
        ]
        if self.quorum:
            conf.append("mqtt.durable_queue_type = quorum")
        (n.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (n.dir / "advanced.config").write_text("[].\n")
        (n.dir / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_auth_backend_http].\n")

    def _spawn(self, n: RabbitNode) -> None:
        if n.running():
            return
        self._write(n)
        out = open(n.dir / "stdout.log", "ab")
        n.proc = subprocess.Popen([str(self.bin / "rabbitmq-server"), "-noinput"], env=self._env(n),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=str(n.dir), start_new_session=True)
        out.close()

    def ctl(self, i: int, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """rabbitmqctl against node i; its output. (~0.5-1 s a call: an Erlang VM starts each time.)"""
        n = self.nodes[i]
        r = subprocess.run([str(self.bin / "rabbitmqctl"), "-q", "-n", n.node, *args], env=self._env(n),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} on {n.name}: {r.returncode} {r.stderr.strip()[-800:]}"
                              f" {r.stdout.strip()[-400:]}")
        return r.stdout

    def _wait_listening(self, n: RabbitNode, deadline: float) -> None:
        while not _accepts(n.mqtt_port):
            if not n.running():
                raise BrokerError(f"rabbitmq {n.name} exited {n.proc and n.proc.returncode}: {n.log()[-2500:]}")
            if time.monotonic() > deadline:
                raise BrokerError(f"rabbitmq {n.name} not listening: {n.log()[-2500:]}")
            time.sleep(0.1)

    def start(self, timeout: float = 90.0) -> "RabbitCluster":
        t0 = time.monotonic()
        cookie = self.dir / ".erlang.cookie"
        if not cookie.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            cookie.write_text(os.urandom(16).hex())
            os.chmod(cookie, 0o400)
        self.auth.start()
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            self._spawn(n)
        for n in self.nodes:
            self._wait_listening(n, deadline)
        # nodes 1.. join node 0 (each: stop its app, join, start it again) one after the other:
        # two joins at once can fail mnesia's start on a loaded box (seen in CI: start_app's
        # `{mnesia_app, start}` badmatch); a failed join is reset and tried again
        for i in range(1, len(self.nodes)):
            for attempt in range(3):
                try:
                    self.ctl(i, "stop_app")
                    if attempt:
                        self.ctl(i, "reset")
                    self.ctl(i, "join_cluster", self.nodes[0].node)
                    self.ctl(i, "start_app")
                    break
                except (BrokerError, subprocess.TimeoutExpired) as e:
                    if attempt == 2 or time.monotonic() > deadline:
                        raise BrokerError(f"rabbitmq join_cluster: {e}") from None
                    time.sleep(1.0)
        for n in self.nodes:
            self._wait_listening(n, deadline)
        self._import(self.users)
        self.start_s = round(time.monotonic() - t0, 1)
        return self

    def running_nodes(self, i: int = 0) -> set[str]:
        """The nodes node i sees running in the cluster (rabbitmqctl cluster_status)."""
        st = json.loads(self.ctl(i, "cluster_status", "--formatter", "json"))
        return set(st.get("running_nodes", []))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        up = [i for i, n in enumerate(self.nodes) if n.running()]
        for i in up:
            self._wait_listening(self.nodes[i], deadline)
        want = {self.nodes[i].node for i in up}
        while True:
            try:
                if self.running_nodes(up[0]) >= want:
                    return
            except (BrokerError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise BrokerError(f"rabbitmq cluster not whole: want {sorted(want)}")
            time.sleep(0.3)

    def kill(self, i: int) -> None:
        """SIGKILL node i's VM (beam.smp): nothing flushed, its clients cut."""
        n = self.nodes[i]
        if n.proc and n.proc.poll() is None:
            os.killpg(n.proc.pid, signal.SIGKILL)   # beam and its helpers (erl_child_setup, inet_gethost)
            n.proc.wait(10)

    def restart(self, i: int, timeout: float = 90.0) -> None:
        """Start node i again on its ports and mnesia dir (it rejoins the cluster by itself)."""
        self.kill(i)
        self._spawn(self.nodes[i])
        self.wait_ready(timeout)

    start_node = restart

    # ---- users ------------------------------------------------------------------------
    def add_user(self, name: str, password: str, cloud: bool = False) -> None:
        self.add_users({name: password}, cloud)

    def add_users(self, users: dict[str, str], cloud: bool = False) -> None:
        """Add or change users: the auth service knows their passwords at once; their permissions
        go into the cluster by one import_definitions (new users only)."""
        self.users.update(users)
        if cloud:
            self.cloud_users.update(users)
        if any(n.running() for n in self.nodes):
            self._import({u: p for u, p in users.items() if u not in self._imported})

    def _import(self, users: dict[str, str]) -> None:
        if not users:
            return
        defs: dict[str, list] = {"users": [], "permissions": [], "topic_permissions": []}
        for u in sorted(users):
            # no usable internal password: authentication is the auth service's (client id rule)
            defs["users"].append({"name": u, "password_hash": "", "tags": [],
                                  "hashing_algorithm": "rabbit_password_hashing_sha256"})
            if u in self.cloud_users:
                defs["permissions"].append({"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
                defs["topic_permissions"].append({"user": u, "vhost": "/", "exchange": "amq.topic",
                                                  "write": ".*", "read": ".*"})
            else:
                perms, topic = device_definitions(u)
                defs["permissions"].append(perms)
                defs["topic_permissions"].append(topic)
        path = self.dir / f"defs-{os.urandom(4).hex()}.json"
        path.write_text(json.dumps(defs))
        try:
            i = next(i for i, n in enumerate(self.nodes) if n.running())
            self.ctl(i, "import_definitions", str(path), timeout=300)
        finally:
            path.unlink(missing_ok=True)
        self._imported.update(users)

    def revoke(self, name: str) -> None:
        """Refused at its next login (the auth service) and its permissions gone; live connections
        are closed by the nodes when they next check (not at once)."""
        self.users.pop(name, None)
        self.cloud_users.discard(name)
        self._imported.discard(name)
        i = next(i for i, n in enumerate(self.nodes) if n.running())
        self.ctl(i, "delete_user", name, check=False)

    # ---- figures ----------------------------------------------------------------------
    def rss_kb(self, i: int) -> int:
        """Resident memory of node i's VM (Linux)."""
        n = self.nodes[i]
        if not n.running() or n.proc is None:
            return 0
        for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def queues(self, i: int = 0) -> list[dict]:
        """Every queue: name, type, leader and members (quorum), messages, durable."""
        return json.loads(self.ctl(i, "list_queues", "name", "type", "leader", "members", "messages", "durable",
                                   "--formatter", "json") or "[]")

    # ---- stop -------------------------------------------------------------------------
    def stop(self) -> None:
        for n in self.nodes:
            if n.running() and n.proc:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc:
                try:
                    n.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(n.proc.pid, signal.SIGKILL)
                    n.proc.wait()
                try:  # anything the node left in its session (erl_child_setup)
                    os.killpg(n.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        # the epmd the first node started for our port (a daemon of its own)
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=10,
                           env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)})

    def close(self) -> None:
        self.stop()
        self.auth.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RabbitCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

