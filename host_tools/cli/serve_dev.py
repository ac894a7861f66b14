"""`edgepay serve --dev`: the whole cloud side on one machine with nothing set up, the way
`edgepay demo` runs: its own Mosquitto (device and cloud listeners on free loopback ports), SQLite
under DIR, an `admin` account for the console (its password printed once, when it is made), the
session service on the scripted provider (no money moves), and plain HTTP (the session cookie is
not marked Secure). For development and trials only: a deployment uses a config file (docs/serving.md).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import replace
from pathlib import Path

import click

from host_tools.broker import Broker
from host_tools.cloud.accounts import Accounts
from host_tools.cloud.registry import Registry
from host_tools.service.config import ServiceConfig

PASSWORD_ENV = "EDGEPAY_DEV_MQTT_PASSWORD"


def dev_setup(cfg: ServiceConfig, root: Path) -> tuple[ServiceConfig, Broker]:
    """The config pointed at a private broker and DIR's databases, and that broker, started."""
    root.mkdir(parents=True, exist_ok=True)
    pw = secrets.token_urlsafe(18)
    os.environ[PASSWORD_ENV] = pw        # the service reads the broker password from the environment
    (root / "mosquitto").mkdir(exist_ok=True)
    broker = Broker(users={cfg.user: pw}, cloud_users=(cfg.user,), workdir=root / "mosquitto").start()
    parts = dict(cfg.parts, sessions=True)
    cfg = replace(cfg, broker_host="127.0.0.1", broker_port=broker.cloud_port, password_env=PASSWORD_ENV,
                  registry=str(root / "registry.db"), ledger=str(root / "ledger.db"),
                  releases=str(root / "releases"), cookie_secure=False, parts=parts,
                  provider=cfg.provider or "scripted", instance=cfg.instance or "dev")
    reg = Registry(cfg.registry)
    try:
        acc = Accounts(reg.db)
        if not acc.users():
            admin_pw = secrets.token_urlsafe(12)
            acc.add_user("admin", "admin", password=admin_pw)
            click.echo(f"dev: console user admin, password {admin_pw} (shown once; "
                       f"`edgepay user` manages accounts in {cfg.registry})")
        else:
            click.echo(f"dev: accounts kept from {cfg.registry}")
    finally:
        reg.close()
    click.echo(f"dev: broker 127.0.0.1:{broker.port} for devices, {broker.cloud_port} for the cloud; "
               f"data in {root}; provider {cfg.provider} (no money moves)")
    return cfg, broker
