"""The `edgepay` command line: for firmware engineers (provision, build, flash, logs) and cloud
services (cmd, time, watch, ledger).

Each command group is one module in this package exposing `register(cli)`; adding a command
(`sim`, `demo`) is one module and one name in COMMANDS.

Exit codes: 0 ok; 1 error (bad input, unknown device, bad file: nothing was done); 2 usage error;
3 unreachable (broker, serial port, database). `edgepay cmd` adds its outcome: 10 FAILED,
11 REJECTED, 12 TIMED_OUT, 13 EXPIRED.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from host_tools.cli.common import (DEFAULT_BROKER, DEFAULT_REGISTRY, DEFAULT_USER, EXIT_ERROR, CliError,
                                   Ctx)

COMMANDS = ("provision", "build", "flash", "cmd", "watch", "ledger", "broker", "sim", "demo")

EPILOG = """\b
Exit codes: 0 ok; 1 error (bad input, unknown device, bad file; nothing done);
2 usage; 3 unreachable (broker, serial port, database);
cmd outcomes: 10 FAILED, 11 REJECTED, 12 TIMED_OUT, 13 EXPIRED.
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG)
@click.option("--registry", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGEPAY_REGISTRY",
              default=DEFAULT_REGISTRY, show_default=True, show_envvar=True,
              help="the device registry (SQLite file)")
@click.option("--broker", envvar="EDGEPAY_BROKER", default=DEFAULT_BROKER, show_default=True,
              show_envvar=True,
              help="the broker's CLOUD listener, host:port (cmd, time, watch, sim --broker-dir); "
                   "devices use the device listener: provision --device-broker")
@click.option("--user", envvar="EDGEPAY_MQTT_USER", default=DEFAULT_USER, show_default=True,
              show_envvar=True, help="cloud MQTT user")
@click.option("--password", envvar="EDGEPAY_MQTT_PASSWORD", show_envvar=True,
              help="cloud MQTT password (prefer the environment variable)")
@click.option("--ca", "ca_file", envvar="EDGEPAY_CA", type=click.Path(dir_okay=False), show_envvar=True,
              help="CA certificate: connect to the broker with TLS")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (JSON, or JSON lines for streams)")
@click.version_option(package_name="edgepay")
@click.pass_context
def cli(ctx: click.Context, registry: Path, broker: str, user: str, password: str | None,
        ca_file: str | None, as_json: bool) -> None:
    """edgepay: provision, build, flash and talk to payment boards."""
    ctx.obj = Ctx(registry=registry, broker=broker, user=user, password=password, ca_file=ca_file,
                  json=as_json)


for _name in COMMANDS:
    importlib.import_module(f"host_tools.cli.{_name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: clear errors, never a traceback for bad input (EDGEPAY_DEBUG=1 shows one)."""
    try:
        rv = cli.main(args=argv, prog_name="edgepay", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("EDGEPAY_DEBUG"):
            raise
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        return EXIT_ERROR
    return rv if isinstance(rv, int) else 0


__all__ = ["cli", "main", "CliError"]

if __name__ == "__main__":
    sys.exit(main())
