"""The service's configuration: a TOML file, then environment overrides (a container or a systemd
unit sets those), then defaults. Secrets never sit in the file: the broker password and the API
token come from the environment variables the file names.

    [broker]   host, port, user, password_env, engine, ca_file, servers (engine "nats": the nodes' NATS
               addresses, ["nats://host:4222", ...], where the ingest group shares a JetStream consumer)
    [store]    registry (a SQLite path or postgresql:// URL), ledger (the same forms), releases
               (the directory of firmware releases the chunks part serves: `edgepay release build --out`)
    [http]     host, port, token_env (the bootstrap admin's bearer token; unset: none),
               metrics_public (false: /metrics needs a viewer token), cookie_secure (true: the
               session cookie is sent over HTTPS only; false for plain-HTTP development)
    [parts]    ingest, time, chunks, campaigns, api (booleans, on by default), sessions (off by
               default), ingest_group, chunks_group
    [sessions] provider ("module:factory" returning a PayAfterProvider, or "scripted", the test
               double), instance (its durable name, default the host name), auth_expiry_s, settle_s, claim_lease_s
    [alerts]   enabled (true: the api part evaluates the alert rules), every_s, flag_window_s,
               <kind>_start_s and <kind>_resolve_s per rule (host_tools/cloud/alerts.py: KINDS, DELAYS)
               and offline_budget_amt_ratio / offline_budget_n_ratio (fractions, alerts.RATIOS)
Environment: EDGEPAY_BROKER (host:port), EDGEPAY_MQTT_USER, EDGEPAY_MQTT_PASSWORD,
EDGEPAY_BROKER_ENGINE, EDGEPAY_BROKER_SERVERS (comma separated), EDGEPAY_REGISTRY, EDGEPAY_LEDGER, EDGEPAY_RELEASES, EDGEPAY_HTTP (host:port),
EDGEPAY_PROVIDER, EDGEPAY_INSTANCE.
"""
from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.cloud.alerts import KINDS, RATIOS, AlertError, Rules

PARTS = ("ingest", "time", "chunks", "campaigns", "api", "sessions")
OPT_IN = ("sessions",)   # off unless [parts] turns it on: it needs a payment provider ([sessions] provider)


class ConfigError(ValueError):
    pass


@dataclass
class ServiceConfig:
    broker_host: str = "127.0.0.1"
    broker_port: int = 1884
    user: str = "cloud"
    password_env: str = "EDGEPAY_MQTT_PASSWORD"
    engine: str = "mosquitto"
    ca_file: str | None = None
    servers: tuple[str, ...] = ()   # engine nats: the nodes' NATS addresses (JetStream work sharing)
    registry: str = "edgepay/registry.db"
    ledger: str = "edgepay/ledger.db"
    releases: str = "edgepay/releases"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    token_env: str | None = None
    metrics_public: bool = False
    cookie_secure: bool = True
    parts: dict[str, bool] = field(default_factory=lambda: {p: p not in OPT_IN for p in PARTS})
    ingest_group: str | None = "ingest"
    chunks_group: str | None = "chunks"   # chunk servers in one group split the devices' requests
    provider: str | None = None           # "module:factory" -> a PayAfterProvider; "scripted": the test double
    instance: str = field(default_factory=socket.gethostname)   # the session instance's durable name
    auth_expiry_s: int = 60
    claim_lease_s: float = 30.0           # another instance's unanswered claim is taken over after this
    settle_s: float = 10.0                # without ingest in this process: settle from the ledger this often
    alerts_on: bool = True                # the api part evaluates the alert rules
    alerts: dict[str, float] = field(default_factory=dict)   # [alerts] rule settings (alerts.Rules.from_config)

    @property
    def password(self) -> str:
        pw = os.environ.get(self.password_env)
        if not pw:
            raise ConfigError(f"no broker password: set {self.password_env}")
        return pw

    @property
    def token(self) -> str | None:
        if not self.token_env:
            return None
        tok = os.environ.get(self.token_env)
        if not tok:
            raise ConfigError(f"[http] token_env names {self.token_env}, which is not set")
        return tok


def _hostport(v: str, what: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: HOST:PORT, not {v!r}")
    return host, int(port)


def load(path: str | Path | None, env: dict[str, str] | None = None) -> ServiceConfig:
    """The file (if any), then the environment; ConfigError naming the bad key."""
    env = dict(os.environ if env is None else env)
    c = ServiceConfig()
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        known = {"broker": {"host", "port", "user", "password_env", "engine", "ca_file", "servers"},
                 "store": {"registry", "ledger", "releases"}, "http": {"host", "port", "token_env", "metrics_public", "cookie_secure"},
                 "parts": {*PARTS, "ingest_group", "chunks_group"},
                 "sessions": {"provider", "instance", "auth_expiry_s", "settle_s", "claim_lease_s"},
                 "alerts": {"enabled", "every_s", "flag_window_s", *RATIOS,
                            *(f"{k}_{w}" for k in KINDS for w in ("start_s", "resolve_s"))}}
        for sec, keys in doc.items():
            if sec not in known or not isinstance(keys, dict):
                raise ConfigError(f"{path}: unknown section [{sec}] (known: {', '.join(known)})")
            bad = set(keys) - known[sec]
            if bad:
                raise ConfigError(f"{path}: unknown key(s) in [{sec}]: {', '.join(sorted(bad))}")
        b, s, h, p = (doc.get(k, {}) for k in ("broker", "store", "http", "parts"))
        c.broker_host, c.broker_port = b.get("host", c.broker_host), int(b.get("port", c.broker_port))
        c.user, c.password_env = b.get("user", c.user), b.get("password_env", c.password_env)
        c.engine, c.ca_file = b.get("engine", c.engine), b.get("ca_file", c.ca_file)
        servers = b.get("servers", list(c.servers))
        if not isinstance(servers, list) or not all(isinstance(x, str) and x for x in servers):
            raise ConfigError(f'{path}: [broker] servers is a list of addresses, ["nats://host:4222", ...]')
        c.servers = tuple(servers)
        c.registry, c.ledger = s.get("registry", c.registry), s.get("ledger", c.ledger)
        c.releases = s.get("releases", c.releases)
        c.http_host, c.http_port = h.get("host", c.http_host), int(h.get("port", c.http_port))
        c.token_env = h.get("token_env", c.token_env)
        for key in ("metrics_public", "cookie_secure"):
            if key in h:
                if not isinstance(h[key], bool):
                    raise ConfigError(f"{path}: [http] {key} is true or false")
                setattr(c, key, h[key])
        for part in PARTS:
            if part in p:
                if not isinstance(p[part], bool):
                    raise ConfigError(f"{path}: [parts] {part} is true or false")
                c.parts[part] = p[part]
        c.ingest_group = p.get("ingest_group", c.ingest_group) or None
        c.chunks_group = p.get("chunks_group", c.chunks_group) or None
        ss = doc.get("sessions", {})
        c.provider, c.instance = ss.get("provider", c.provider), str(ss.get("instance", c.instance))
        for key in ("auth_expiry_s", "settle_s", "claim_lease_s"):
            if key in ss:
                v = ss[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ConfigError(f"{path}: [sessions] {key} is a number of seconds above 0")
                setattr(c, key, v)
        al = dict(doc.get("alerts", {}))
        on = al.pop("enabled", True)
        if not isinstance(on, bool):
            raise ConfigError(f"{path}: [alerts] enabled is true or false")
        try:
            Rules.from_config(al)
        except AlertError as e:
            raise ConfigError(f"{path}: {e}") from None
        c.alerts_on, c.alerts = on, al
    if "EDGEPAY_BROKER" in env:
        c.broker_host, c.broker_port = _hostport(env["EDGEPAY_BROKER"], "EDGEPAY_BROKER")
    if "EDGEPAY_HTTP" in env:
        c.http_host, c.http_port = _hostport(env["EDGEPAY_HTTP"], "EDGEPAY_HTTP")
    c.user = env.get("EDGEPAY_MQTT_USER", c.user)
    c.engine = env.get("EDGEPAY_BROKER_ENGINE", c.engine)
    if "EDGEPAY_BROKER_SERVERS" in env:
        c.servers = tuple(x.strip() for x in env["EDGEPAY_BROKER_SERVERS"].split(",") if x.strip())
    c.registry = env.get("EDGEPAY_REGISTRY", c.registry)
    c.ledger = env.get("EDGEPAY_LEDGER", c.ledger)
    c.releases = env.get("EDGEPAY_RELEASES", c.releases)
    c.provider = env.get("EDGEPAY_PROVIDER", c.provider)
    c.instance = env.get("EDGEPAY_INSTANCE", c.instance)
    return c
