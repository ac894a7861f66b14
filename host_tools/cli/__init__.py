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

import click

from host_tools.cli.common import (DEFAULT_BROKER, DEFAULT_REGISTRY, DEFAULT_USER, EXIT_ERROR, EXIT_USAGE,
                                   CliError, Ctx, show_error)

COMMANDS = ("provision", "device", "registry", "build", "release", "flash", "journal", "cmd", "campaign", "ota", "serve", "user", "watch", "ledger", "broker", "sim", "demo")

EPILOG = """\b
Exit codes: 0 ok; 1 error (bad input, unknown device, bad file; nothing done);
2 usage; 3 unreachable (broker, serial port, database);
cmd outcomes: 10 FAILED, 11 REJECTED, 12 TIMED_OUT, 13 EXPIRED;
campaign run/status, ota deploy/status: 5 halted or cancelled, 6 still running or paused.
\b
--json: one JSON object on stdout; streams (watch, logs, sim, demo) print JSON lines,
one object per line. A failure is also a JSON object on stdout, nothing on stderr:
{"error": "<message>", "code": "error|usage|unreachable", "exit": <exit code>}.
"""


class EdgepayGroup(click.Group):
    """`main` with one error path (console script and click's test runner alike): a clear line on
    stderr, or under --json a JSON object on stdout, with the same exit code; never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        try:
            rv = super().main(args=argv, prog_name=prog_name or "edgepay", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Abort:
            show_error("aborted", 130, as_json)
            code = 130
        except CliError as e:
            show_error(e.format_message(), e.exit_code, as_json)
            code = e.exit_code
        except click.UsageError as e:
            if as_json:
                show_error(e.format_message(), EXIT_USAGE, True)
            else:
                e.show()
            code = e.exit_code
        except click.ClickException as e:
            show_error(e.format_message(), e.exit_code, as_json)
            code = e.exit_code
        except click.exceptions.Exit as e:
            code = e.exit_code
        except KeyboardInterrupt:
            show_error("interrupted", 130, as_json)
            code = 130
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            if os.environ.get("EDGEPAY_DEBUG"):
                raise
            show_error(f"{type(e).__name__}: {e}", EXIT_ERROR, as_json)
            code = EXIT_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=EdgepayGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG)
@click.option("--registry", envvar="EDGEPAY_REGISTRY", default=str(DEFAULT_REGISTRY), show_default=True,
              show_envvar=True, help="the device registry: a SQLite file, or a postgresql:// URL (the ledger's)")
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
@click.option("--broker-engine", "engine", envvar="EDGEPAY_BROKER_ENGINE", default="mosquitto", show_default=True,
              show_envvar=True, type=click.Choice(["mosquitto", "nats", "rabbitmq"]),
              help="the broker engine: the MQTT version the cloud speaks to it (5 on Mosquitto, 3.1.1 on the others)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable stdout: one JSON object, or JSON lines (one object a line) for "
                   "streams (watch, logs, sim, demo); a failure is {\"error\", \"code\", \"exit\"} on stdout")
@click.version_option(package_name="edgepay")
@click.pass_context
def cli(ctx: click.Context, registry: str, broker: str, user: str, password: str | None,
        ca_file: str | None, engine: str, as_json: bool) -> None:
    """edgepay: provision, build, flash and talk to payment boards."""
    ctx.obj = Ctx(registry=registry, broker=broker, user=user, password=password, ca_file=ca_file,
                  engine=engine, json=as_json)


for _name in COMMANDS:
    importlib.import_module(f"host_tools.cli.{_name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: clear errors, never a traceback for bad input (EDGEPAY_DEBUG=1 shows one)."""
    return cli.main(args=argv, prog_name="edgepay", standalone_mode=False)


__all__ = ["cli", "main", "CliError"]

if __name__ == "__main__":
    sys.exit(main())
