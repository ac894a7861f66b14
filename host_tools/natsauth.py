"""The NATS auth callout that gives the cluster Mosquitto's `use_username_as_clientid`: NATS has
no per-user client-id rule, but it hands every connection's credentials and MQTT client id
(client_info.mqtt_id) to a callout service, which answers with the user's permissions or a refusal.

    svc = AuthCallout(Issuer(), users, cloud_users, device_permissions, ports, "auth", "pw").start()
    svc.start(); ...; svc.stop()

A device user is accepted only with its own password and client id == its user name (an MQTT-only
user confined to its own topics); a cloud user with its password, any client id. One connection to
every node in queue group "auth": a request from any node is answered while one node is up.

The wire: NATS's text protocol (INFO/CONNECT/SUB/MSG/PUB), and NATS JWTs (ed25519-nkey): an
authorization_response for the asking server, carrying a user JWT bound to account APP.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import socket
import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["AuthCallout", "Issuer", "decide", "nkey_public", "request", "APP_ACCOUNT", "AUTH_SUBJECT", "SYS_ACCOUNT"]

log = logging.getLogger(__name__)
AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
APP_ACCOUNT = "APP"
SYS_ACCOUNT = "SYS"    # the servers' system account: the operator's requests (kick a connection)
_PREFIX_ACCOUNT = 0    # nkeys: 'A...'
_PREFIX_USER = 20 << 3


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)  # CRC-16/XMODEM, the nkeys checksum


def nkey_public(prefix: int, raw: bytes) -> str:
    body = bytes([prefix]) + raw
    return base64.b32encode(body + _crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Issuer:
    """The callout's account key: it signs the responses; the servers trust its public 'A...' key."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public = nkey_public(_PREFIX_ACCOUNT, self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def jwt(self, claims: dict) -> str:
        claims = {"iat": int(time.time()), "iss": self.public, **claims}
        claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()) \
            .decode().rstrip("=")
        head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        body = _b64(json.dumps(claims).encode())
        return f"{head}.{body}.{_b64(self._key.sign(f'{head}.{body}'.encode()))}"


def decide(req: dict, users: dict[str, str], cloud_users: dict[str, dict],
           device_perms) -> tuple[str | None, dict | None]:
    """(refusal, None) or (None, user claims' nats section) for one decoded authorization request.
    cloud_users: name -> its permissions (any client id); every other user is a device."""
    opts, info = req.get("connect_opts") or {}, req.get("client_info") or {}
    user, pw = opts.get("user") or "", opts.get("pass") or ""
    known = users.get(user)
    if known is None or not hmac.compare_digest(known.encode(), pw.encode()):
        return "bad user or password", None
    if user in cloud_users:
        return None, {**_nats_perms(cloud_users[user]), "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
    if info.get("type") != "mqtt":
        return "device users connect over MQTT only", None
    if info.get("mqtt_id") != user:
        return "client id must be the user name", None
    return None, {**_nats_perms(device_perms(user)), "allowed_connection_types": ["MQTT"], "type": "user", "version": 2,
                  "subs": -1, "data": -1, "payload": -1}


def _nats_perms(p: dict) -> dict:
    """Server-config permissions {"publish": {"allow": [...]}} as user-JWT claims {"pub": {...}}."""
    return {"pub": p.get("publish", {}), "sub": p.get("subscribe", {})}


class AuthCallout:
    def __init__(self, issuer: Issuer, users: dict[str, str], cloud_users: dict[str, dict], device_perms,
                 ports: list[int], auth_user: str, auth_password: str, system_users: dict[str, str] | None = None):
        """users and cloud_users are read at every request: the caller updates them in place.
        system_users: name -> password of the operator's users, put in the system account (no MQTT)."""
        self.issuer, self.users, self.cloud_users = issuer, users, cloud_users
        self.system_users = dict(system_users or {})
        self.device_perms = device_perms
        self.ports, self.auth = ports, (auth_user, auth_password)
        self.refused: list[tuple[str, str, str]] = []   # (user, client id, why)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "AuthCallout":
        for p in self.ports:
            t = threading.Thread(target=self._run, args=(p,), daemon=True, name=f"nats-auth-{p}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3)

    def _run(self, port: int) -> None:
        while not self._stop.is_set():   # reconnect to this node for as long as we run
            try:
                self._serve(port)
            except OSError:
                pass  # the node is down or restarting
            except Exception:  # a request we cannot parse must not end the service for this node
                log.exception("auth callout on port %d", port)
            self._stop.wait(0.2)

    def _serve(self, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(0.5)
            f = _Reader(s, self._stop)
            f.line()  # INFO
            connect = {"user": self.auth[0], "pass": self.auth[1], "verbose": False, "pedantic": False,
                       "headers": True, "no_responders": True, "name": "edgepay-auth-callout"}
            s.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {AUTH_SUBJECT} auth 1\r\nPING\r\n".encode())
            while not self._stop.is_set():
                line = f.line()
                if line is None:
                    continue
                if line == "PING":
                    s.sendall(b"PONG\r\n")
                elif line.startswith(("MSG ", "HMSG ")):
                    parts = line.split()
                    reply = parts[3] if len(parts) > (5 if parts[0] == "HMSG" else 4) else ""
                    data = f.take(int(parts[-1]) + 2)[:-2]
                    if parts[0] == "HMSG":
                        data = data[int(parts[-2]):]
                    if reply:
                        try:
                            out = self._answer(data.decode())
                        except (ValueError, KeyError, IndexError, AttributeError):
                            log.warning("auth callout: an unreadable authorization request, unanswered")
                            continue  # the server refuses the connection at its auth timeout
                        s.sendall(b"PUB %s %d\r\n%s\r\n" % (reply.encode(), len(out), out))
                elif line.startswith("-ERR"):
                    raise ConnectionError(line)

    def _answer(self, token: str) -> bytes:
        claims = json.loads(_unb64(token.split(".")[1]))
        req = claims.get("nats") or {}
        user_nkey, server_id = req.get("user_nkey", ""), (req.get("server_id") or {}).get("id", "")
        opts = req.get("connect_opts") or {}
        sys_pw = self.system_users.get(opts.get("user") or "")
        if sys_pw is not None and (req.get("client_info") or {}).get("type") != "mqtt":
            ok = hmac.compare_digest(sys_pw.encode(), (opts.get("pass") or "").encode())
            why, nats = (None, {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}) if ok \
                else ("bad user or password", None)
            account = SYS_ACCOUNT
        else:
            why, nats = decide(req, self.users, self.cloud_users, self.device_perms)
            account = APP_ACCOUNT
        resp: dict = {"sub": user_nkey, "aud": server_id,
                      "nats": {"type": "authorization_response", "version": 2}}
        if why is not None:
            info = req.get("client_info") or {}
            self.refused.append(((req.get("connect_opts") or {}).get("user", ""), info.get("mqtt_id", ""), why))
            resp["nats"]["error"] = why
        else:
            user = (req.get("connect_opts") or {}).get("user", "")
            resp["nats"]["jwt"] = self.issuer.jwt({"sub": user_nkey, "aud": account, "name": user, "nats": nats})
        return self.issuer.jwt(resp).encode()


def request(port: int, user: str, password: str, subject: str, payload: bytes, timeout: float = 3.0) -> bytes:
    """One request/reply on a node's NATS client port, in the text protocol: the answer's payload."""
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        f = _Reader(s, stop)
        f.line()  # INFO
        connect = {"user": user, "pass": password, "verbose": False, "pedantic": False, "name": "edgepay-admin"}
        s.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB _INBOX.admin 1\r\nPING\r\n".encode())
        while (line := f.line()) != "PONG":
            if line is None or line.startswith("-ERR"):
                raise ConnectionError(f"node {port} refused us: {line}")
        s.sendall(b"PUB %s _INBOX.admin %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        while True:
            line = f.line()
            if line is None:
                raise TimeoutError(f"no answer to {subject} from node {port}")
            if line == "PING":
                s.sendall(b"PONG\r\n")
            elif line.startswith("MSG "):
                stop.set()
                return f.take(int(line.split()[-1]) + 2)[:-2]
            elif line.startswith("-ERR"):
                raise ConnectionError(line)


class _Reader:
    def __init__(self, s: socket.socket, stop: threading.Event):
        self.s, self.buf, self.stop = s, b"", stop

    def _fill(self) -> bool:
        try:
            got = self.s.recv(65536)
        except socket.timeout:
            return False
        if not got:
            raise ConnectionError("closed")
        self.buf += got
        return True

    def line(self) -> str | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill() and self.stop.is_set():
                raise ConnectionError("stopped")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

