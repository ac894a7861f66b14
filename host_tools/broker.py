"""Run a private Mosquitto broker for tests, the simulator and the demo.

    b = Broker(users={"cloud": "pw", "gate-001": "pw2"}, cloud_users=("cloud",))
    b.start(); ...; b.freeze(); b.thaw(); b.kill(); b.restart(); b.stop()

The generated mosquitto.conf listens on 127.0.0.1 only, refuses anonymous clients, uses a PBKDF2
password file and the edgepay ACL (protocol/SPEC.md §1): a device user may write
v1/dev/<its name>/up/# and read v1/dev/<its name>/dn/#; a cloud user may read and write v1/#.

Two listeners (per_listener_settings): the device listener, where the username is the client id
(so no credentials can take over another device's session), and the cloud listener on
`cloud_port`, for cloud users only, where each worker keeps its own client id: with username-as-
client-id, two cloud workers sharing a username would disconnect each other forever.

One packet bound for the whole broker (Mosquitto's `max_packet_size` is global): MAX_PACKET, the
device's own (SPEC §1). A bigger packet disconnects its sender and is never stored, so it cannot sit
in a device's persistent session and be redelivered at every connect.
"""
import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools.protocol.cbor import MAX_MESSAGE

__all__ = ["Broker", "BrokerError", "free_port", "mosquitto_path", "limit_conf", "DEVICE_PORT", "CLOUD_PORT",
           "MAX_PACKET"]

# The fixed ports of a deployed broker (`edgepay broker conf`): devices on DEVICE_PORT, cloud
# workers (ingest, command clients, `edgepay cmd/time/watch`) on CLOUD_PORT. Broker() itself picks
# free ports; tests read them from .port and .cloud_port.
DEVICE_PORT = 1883
CLOUD_PORT = 1884

# The largest legitimate MQTT packet as a remaining length (SPEC §1): a message at the SPEC bound
# plus topic (<= 49 B), packet id, MQTT 5 properties and headroom; firmware/agent.py MAX_PACKET, the
# device's bound, is the same number (tests/test_oversize_vm.py checks). Raise MAX_MESSAGE and both follow.
MAX_PACKET = MAX_MESSAGE + 252


def limit_conf(max_packet: int | None = MAX_PACKET) -> list[str]:
    """The global mosquitto.conf line for a packet bound (none for None or 0). Mosquitto compares
    the remaining length plus one (the first header byte) with `max_packet_size`."""
    return ["max_packet_size %d" % (max_packet + 1)] if max_packet else []


class BrokerError(RuntimeError):
    pass


def mosquitto_path():
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not exe:
        raise BrokerError("mosquitto is not installed: run `make setup` or `apt-get install mosquitto`")
    return exe


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mtls_auth(acl):
    """A device listener's authentication by certificate (mutual TLS): the broker requires a client
    certificate signed by its CA, takes its CN as the username (and, as everywhere, the username as
    the client id), so the ACL's %u is the certified device id; no password is asked."""
    return ["require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
            "allow_anonymous false", "acl_file %s" % acl]


def password_line(user, password, iterations=101):
    """Mosquitto 2.x password file entry: $7$ = PBKDF2-HMAC-SHA512, 12-byte salt."""
    salt = os.urandom(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return "%s:$7$%d$%s$%s\n" % (user, iterations, base64.b64encode(salt).decode(),
                                 base64.b64encode(dk).decode())


class Broker:
    def __init__(self, users=None, cloud_users=("cloud",), port=None, persistence=False,
                 tls=None, tls_port=None, workdir=None, extra_conf="", log_type="error",
                 max_packet=MAX_PACKET):
        """users: {name: password}. tls: None or {"cafile", "certfile", "keyfile"} (paths);
        a TLS listener then runs on tls_port (free port by default). max_packet: the packet bound
        (remaining length; None: none, for tests that let an oversize packet through to a device)."""
        self.exe = mosquitto_path()
        self.users = dict(users or {})
        self.cloud_users = set(cloud_users)
        self._auto_port = port is None and tls_port is None
        self._started_once = False
        self.port = port or free_port()
        self.cloud_port = free_port()
        self.tls = tls
        self.tls_port = (tls_port or free_port()) if tls else None
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.max_packet = max_packet
        self.log_type = log_type
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edgepay-mosq-"))
        self.proc = None
        self.frozen = False

    # ---- config -----------------------------------------------------------------------
    def _write_files(self):
        d = self.dir
        with open(d / "passwd", "w") as f:
            for u, p in self.users.items():
                f.write(password_line(u, p))
        os.chmod(d / "passwd", 0o600)
        acl = ["pattern write v1/dev/%u/up/#", "pattern read v1/dev/%u/dn/#", ""]
        for u in sorted(self.cloud_users):
            acl += ["user %s" % u, "topic readwrite v1/#", ""]
        (d / "acl").write_text("\n".join(acl))
        os.chmod(d / "acl", 0o600)
        with open(d / "passwd_cloud", "w") as f:
            for u in sorted(self.cloud_users):
                if u in self.users:
                    f.write(password_line(u, self.users[u]))
        os.chmod(d / "passwd_cloud", 0o600)
        (d / "acl_cloud").write_text("".join("user %s\ntopic readwrite v1/#\ntopic readwrite bench/#\n\n" % u
                                             for u in sorted(self.cloud_users)))
        os.chmod(d / "acl_cloud", 0o600)
        device_auth = ["use_username_as_clientid true", "allow_anonymous false",
                       "password_file %s" % (d / "passwd"), "acl_file %s" % (d / "acl")]
        conf = [
            "per_listener_settings true",
            # run as whoever started us (as root mosquitto would switch to user "mosquitto",
            # which cannot read our temp dir)
            "user %s" % pwd.getpwuid(os.getuid()).pw_name,
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            *limit_conf(self.max_packet),
            "persistence %s" % ("true" if self.persistence else "false"),
            "persistence_location %s/" % d,
            "log_dest file %s" % (d / "mosquitto.log"),
            "log_type %s" % self.log_type,
            # listener options must follow their `listener` line, or mosquitto also opens a
            # default listener on 0.0.0.0:1883
            "listener %d 127.0.0.1" % self.port,
            *device_auth,
            "listener %d 127.0.0.1" % self.cloud_port,
            "allow_anonymous false",
            "password_file %s" % (d / "passwd_cloud"),
            "acl_file %s" % (d / "acl_cloud"),
        ]
        if self.tls:
            conf += [
                "listener %d 127.0.0.1" % self.tls_port,
                *(mtls_auth(d / "acl") if self.tls.get("require_certificate") else device_auth),
                "cafile %s" % self.tls["cafile"],
                "certfile %s" % self.tls["certfile"],
                "keyfile %s" % self.tls["keyfile"],
                "tls_version tlsv1.2",
            ]
            if self.tls.get("crlfile"):
                conf.append("crlfile %s" % self.tls["crlfile"])
        conf.append(self.extra_conf)
        (d / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    @property
    def conf(self):
        return self.dir / "mosquitto.conf"

    def log(self):
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # ---- lifecycle --------------------------------------------------------------------
    def start(self, timeout=10.0):
        for attempt in range(10):
            try:
                return self._start(timeout)
            except BrokerError as e:
                if "in use" not in str(e):
                    raise
                if self._started_once:
                    # a restart keeps its ports (its clients reconnect to them): while it was
                    # down, one may have been some other socket's for a moment (an outgoing
                    # connection's ephemeral port): wait for it, up to ~5 s
                    time.sleep(0.5)
                    continue
                # a port picked by free_port() can be taken by someone else before mosquitto
                # binds it: pick new ones, but only before the first successful start
                if not self._auto_port:
                    raise
                self.port = free_port()
                self.cloud_port = free_port()
                if self.tls:
                    self.tls_port = free_port()
        raise BrokerError("no free port")

    def _start(self, timeout):
        if self.proc and self.proc.poll() is None:
            return self
        self._write_files()
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=str(self.dir))
        self.frozen = False
        deadline = time.monotonic() + timeout
        ports = [self.port, self.cloud_port] + ([self.tls_port] if self.tls else [])
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BrokerError("mosquitto exited %s: %s %s" % (self.proc.returncode, err, self.log()))
            if all(_accepts(p) for p in ports) and _catches_sighup(self.proc.pid):
                self._started_once = True
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError("mosquitto did not listen on %s: %s" % (ports, self.log()))
            time.sleep(0.02)

    def _signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM (persists the database when persistence is on) and wait."""
        if self.frozen:
            self.thaw()
        self._signal(signal.SIGTERM)
        self._wait(timeout)

    def kill(self):
        """SIGKILL: nothing is saved."""
        self._signal(signal.SIGKILL)
        self._wait(10.0)
        self.frozen = False

    def _wait(self, timeout):
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def freeze(self):
        """SIGSTOP: the port stays open but nothing is answered (a hung broker or a cut path)."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        self._signal(signal.SIGCONT)
        self.frozen = False

    def restart(self, kill=False, down_s=0.0):
        """Stop (SIGTERM, or SIGKILL if kill) and start again on the same port(s)."""
        self.kill() if kill else self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def add_user(self, name, password, cloud=False):
        """Add or change a user; a running broker reloads its password and ACL files (SIGHUP)."""
        self.users[name] = password
        if cloud:
            self.cloud_users.add(name)
        if self.running():
            self._write_files()
            self._signal(signal.SIGHUP)
            time.sleep(0.1)

    def add_users(self, users, cloud=False):
        """Add or change many users with one file write and one reload (SIGHUP): a fleet of
        thousands provisions in seconds, where add_user per device would rewrite the password file
        (every PBKDF2 line) and reload the broker once per device."""
        self.users.update(users)
        if cloud:
            self.cloud_users.update(users)
        if self.running():
            self._write_files()
            self._signal(signal.SIGHUP)
            time.sleep(0.2)

    def close(self):
        if self.frozen:
            self.thaw()
        if self.running():
            self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _catches_sighup(pid):
    """Mosquitto listens before it installs its signal handlers: a SIGHUP (add_user's reload) in
    between kills it (1 start in 10 with a TLS listener). Linux shows the handlers in /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    except OSError:
        pass
    return True


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
