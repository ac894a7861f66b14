"""No secret in any log the suite writes (issue 15 §4): every device key and broker password the
tests make is collected as it is made (Registry.add, the broker's password lines, every device
config.json under the run's temp dir: the CLI's subprocesses too), and every log is searched for
each of them at the end of the run: board consoles (console.log), Mosquitto's and PostgreSQL's
logs (read as each server closes, before its temp dir goes) and any other *.log under the run's
temp dir. A hit fails the run, naming the file and the kind of secret (never the secret).

Loaded from tests/conftest.py as a plugin; one pass per xdist worker, over that worker's files."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from host_tools import broker as broker_mod
from host_tools import pgserver
from host_tools import provision as provision_mod
from host_tools.cloud import registry as registry_mod

SECRETS: dict[str, str] = {}  # text form -> what it is ("device key (hex)", ...)
CLOSED_LOGS: list[tuple[str, str]] = []  # (name, text) of servers' logs read as they closed


def note_key(key: bytes, into: dict[str, str] = SECRETS) -> None:
    key = bytes(key)
    if len(key) < 16:  # a test's deliberately bad key (b""): its forms would match anything
        return
    into[key.hex()] = "device key (hex)"
    into[base64.b64encode(key).decode()] = "device key (base64)"


def note_password(password: str, into: dict[str, str] = SECRETS) -> None:
    if len(password) >= 12:  # generated ones: a short literal would match by chance
        into[password] = "broker password"


def harvest_configs(root: Path, into: dict[str, str] = SECRETS) -> None:
    for p in root.rglob("config.json"):
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and isinstance(cfg.get("key"), str):
            try:
                note_key(bytes.fromhex(cfg["key"]), into)
            except ValueError:
                pass
            pw = (cfg.get("broker") or {}).get("password")
            if isinstance(pw, str):
                note_password(pw, into)


def leaks(texts: list[tuple[str, str]], secrets: dict[str, str] = SECRETS) -> list[str]:
    return [f"{name}: {what}" for name, text in texts for s, what in secrets.items() if s in text]


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs(tmp_path_factory):
    add, line = registry_mod.Registry.add, broker_mod.password_line
    offer = registry_mod.Registry.offer_next
    bclose, pclose = broker_mod.Broker.close, pgserver.PgServer.close

    def reg_add(self, device_id, key, *a, **kw):
        note_key(key)
        return add(self, device_id, key, *a, **kw)

    def offer_next(self, *a, **kw):  # a key rotation's next key (SPEC §11)
        version, key = offer(self, *a, **kw)
        note_key(key)
        return version, key

    def password_line(user, password, *a, **kw):
        note_password(password)
        return line(user, password, *a, **kw)

    def broker_close(self):
        CLOSED_LOGS.append((f"mosquitto.log ({self.dir.name})", self.log()))
        return bclose(self)

    def pg_close(self):
        try:
            CLOSED_LOGS.append((f"postgres.log ({self.dir.name})", self.log()))
        except Exception:  # noqa: BLE001 - a server that never started has no log
            pass
        return pclose(self)

    registry_mod.Registry.add = reg_add
    registry_mod.Registry.offer_next = offer_next
    broker_mod.password_line = provision_mod.password_line = password_line
    broker_mod.Broker.close = broker_close
    pgserver.PgServer.close = pg_close
    yield
    registry_mod.Registry.add = add
    registry_mod.Registry.offer_next = offer
    broker_mod.password_line = provision_mod.password_line = line
    broker_mod.Broker.close, pgserver.PgServer.close = bclose, pclose
    root = tmp_path_factory.getbasetemp()
    harvest_configs(root)
    texts = list(CLOSED_LOGS)
    for p in root.rglob("*.log"):
        try:
            texts.append((str(p.relative_to(root)), p.read_text(errors="replace")))
        except OSError:
            pass
    found = leaks(texts)
    assert not found, "secrets in logs:\n" + "\n".join(sorted(set(found))[:20])
