"""What every `edgepay` command shares: global options, errors without tracebacks, output (rich
for people, one JSON document or JSON lines with --json), the registry and the broker address."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

import click
from rich.console import Console

from host_tools.boardcheck import check_board  # noqa: F401 (the full check: schema and rules)
from host_tools.broker import CLOUD_PORT
from host_tools.provision import make_private_dir, write_private  # noqa: F401 (cli modules import them from here)

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "boards"
DEFAULT_REGISTRY = Path("edgepay") / "registry.db"
# Cloud-side commands talk to the broker's cloud listener (host_tools/broker.py CLOUD_PORT); only
# a device connects to the device listener (DEVICE_PORT): `provision --device-broker`.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BROKER = f"{DEFAULT_HOST}:{CLOUD_PORT}"
DEFAULT_USER = "cloud"

# Exit codes (documented in `edgepay --help` and host_tools/cli/__init__.py)
EXIT_OK = 0
EXIT_ERROR = 1        # bad input, unknown device, bad file, anything refused before acting
EXIT_USAGE = 2        # click's own usage errors (unknown option, missing argument)
EXIT_UNREACHABLE = 3  # broker, serial port or database unreachable
# The "code" of a JSON error object (--json): a name for each exit code a script can match on.
EXIT_NAMES = {EXIT_ERROR: "error", EXIT_USAGE: "usage", EXIT_UNREACHABLE: "unreachable", 130: "interrupted"}


def error_object(message: str, exit_code: int) -> dict:
    """What --json prints on stdout for a failure: {"error", "code", "exit"} (the exit code unchanged)."""
    return {"error": message, "code": EXIT_NAMES.get(exit_code, "error"), "exit": exit_code}


def show_error(message: str, exit_code: int, as_json: bool) -> None:
    """One failure: a JSON object on stdout with --json (stdout stays parseable), else a line on stderr."""
    if as_json:
        click.echo(json.dumps(error_object(message, exit_code), sort_keys=True))
    else:
        click.echo(f"error: {message}", err=True)


class CliError(click.ClickException):
    """A clear one-line error: printed as `error: ...`, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = code  # pyright: ignore[reportAttributeAccessIssue] - click declares a class default; per-error codes are how click reads it

    def show(self, file: Any = None) -> None:
        show_error(self.format_message(), self.exit_code, False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, code)


@dataclass
class Ctx:
    registry: Path | str = DEFAULT_REGISTRY  # a SQLite path or a postgresql:// URL
    broker: str = DEFAULT_BROKER
    user: str = DEFAULT_USER
    password: str | None = None
    ca_file: str | None = None
    engine: str = "mosquitto"   # the broker engine (host_tools/cloud/mqtt.py ENGINES)
    json: bool = False
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    # ---- output -------------------------------------------------------------------------
    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """One JSON document with --json, else the rich rendering."""
        if self.json:
            click.echo(json.dumps(data, sort_keys=True, default=jsonable))
        else:
            human()

    def jsonline(self, data: Any) -> None:
        click.echo(json.dumps(data, sort_keys=True, default=jsonable))
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """Progress chatter: stderr, so stdout stays data (and --json stays parseable)."""
        self.err.print(text)

    # ---- broker and registry -------------------------------------------------------------
    def broker_addr(self) -> tuple[str, int]:
        """The broker's host and port, after checking the TLS CA file (if any) can be used: a
        missing or unreadable CA is its own error, not "cannot connect to the broker"."""
        if self.ca_file is not None:
            check_ca_file(self.ca_file)
        return parse_hostport(self.broker, "--broker / EDGEPAY_BROKER")

    def broker_settings(self, host: str, port: int, password: str):
        from host_tools.cloud.mqtt import BrokerSettings
        return BrokerSettings(host, port, self.user, password, ca_file=self.ca_file, engine=self.engine)

    def need_password(self) -> str:
        if not self.password:
            fail("no MQTT password for the cloud user: give --password or set EDGEPAY_MQTT_PASSWORD")
        return self.password

    def open_registry(self, create: bool = False):
        from host_tools.cloud.registry import Registry
        from host_tools.cloud.ledger_open import is_postgres
        url = str(self.registry)
        if is_postgres(url):  # the ledger's PostgreSQL
            try:
                return Registry(url)
            except Exception as e:  # noqa: BLE001 - psycopg's errors: one clear line
                fail(f"cannot open the registry database: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
                     EXIT_UNREACHABLE)
        path = Path(self.registry)
        if not create and not path.exists():
            fail(f"no registry at {path} (provision a device first, or give --registry / EDGEPAY_REGISTRY)")
        if create:
            make_private_dir(path.parent)
        try:
            reg = Registry(path)
            reg.devices()  # a file that is not our database fails here, clearly
        except Exception as e:  # sqlite3.DatabaseError and friends
            fail(f"cannot open the registry {path}: {e}")
        if create:
            os.chmod(path, 0o600)  # it holds device keys
        return reg

    def device(self, registry, device_id: str):
        from host_tools.cloud.registry import RegistryError
        try:
            return registry.get(device_id)
        except RegistryError as e:
            fail(str(e))


def jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if hasattr(v, "value"):  # enums
        return v.value
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def each_device(o: "Ctx", device_ids, act: Callable[[str], tuple[dict, str]], refusals: tuple, verb: str,
                total: str, after: Callable[[list[dict]], tuple[dict, bool]] | None = None) -> None:
    """Run act(device) -> (result, what it did) for each device named (once each, in order), a line
    per device; an exception of `refusals` is that device's failure, named by its code (a registry
    error: unknown_device). --json: {"devices": [...], total: n, "failed": n}. Exit 1 if any failed.
    after(results) -> (more summary fields, ok): a step once every device was tried (its fields in
    the JSON summary; not ok: exit 1 too)."""
    results = []
    for device_id in dict.fromkeys(device_ids):
        try:
            out, did = act(device_id)
            results.append({**out, "ok": True})
            line = f"[green]{verb}[/] {device_id}: {did}"
        except refusals as e:
            code, detail = getattr(e, "code", "unknown_device"), getattr(e, "detail", str(e))
            results.append({"device": device_id, "ok": False, "error": code, "detail": detail})
            line = f"[bold red]not {verb}[/] {device_id}: {detail or code}"
        if not o.json:
            o.console.print(line)
    failed = sum(not r["ok"] for r in results)
    more, ok = after(results) if after is not None else ({}, True)
    if o.json:
        o.emit({"devices": results, total: len(results) - failed, "failed": failed, **more}, lambda: None)
    if failed or not ok:
        raise click.exceptions.Exit(1)


def check_ca_file(path: str) -> None:
    import ssl
    p = Path(path)
    if not p.exists():
        fail(f"the CA file {p} does not exist (--ca / EDGEPAY_CA: the broker's CA certificate, PEM)")
    if not p.is_file():
        fail(f"the CA file {p} is not a file (--ca / EDGEPAY_CA)")
    try:
        ssl.create_default_context(cafile=str(p))
    except PermissionError as e:
        fail(f"cannot read the CA file {p}: {e.strerror}")
    except (ssl.SSLError, OSError, ValueError) as e:
        fail(f"the CA file {p} is not a PEM CA certificate ({e})")


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"bad {what} {text!r}: use host:port, e.g. 127.0.0.1:{CLOUD_PORT}")
    return host.strip("[]"), int(port)


# ---- boards -------------------------------------------------------------------------------
def board_names() -> list[str]:
    return sorted(p.stem for p in BOARDS.glob("*.json") if p.stem != "schema")


def read_json_object(p: Path, what: str) -> dict:
    """The JSON object in file `p`; a clear error naming `what` it should be otherwise."""
    try:
        obj = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        fail(f"{what} {p} is not valid JSON: {e}")
    if not isinstance(obj, dict):
        fail(f"{what} {p} is not a JSON object")
    return obj


def load_board(name_or_path: str) -> dict:
    """A board definition by name (boards/<name>.json) or by path; a clear error otherwise."""
    p = Path(name_or_path)
    if not (p.suffix == ".json" or os.sep in name_or_path):
        p = BOARDS / f"{name_or_path}.json"
    if not p.is_file():
        known = ", ".join(board_names()) or "none yet: boards/ has no board files"
        fail(f"no board {name_or_path!r} (no file {p}); known boards: {known}")
    board = read_json_object(p, "board file")
    problems = check_board(board)
    if problems:
        fail(f"board file {p} is not a valid board definition: {problems[0]}")
    board.setdefault("name", p.stem)
    return board


def is_sim_board(board: dict) -> bool:
    return bool(board.get("sim"))
