"""`edgepay sim`: simulated boards of chosen kinds (the firmware on the MicroPython VM) against a
broker (its own Mosquitto, or an operator's with --broker-dir), with the whole cloud side (ingest,
ledger, pay-after provider, session service) and a live view: device, kind, state, online, last
event, journal depth, sessions. Scenarios: `traffic` (for --duration real seconds), `hour` (an
hour at a site, with a network outage and a power cut), `idle` (boards only)."""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.broker import DEVICE_PORT
from host_tools.cli.common import Ctx, fail, parse_hostport


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--gates", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--vending", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--rental", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--scenario", type=click.Choice(["traffic", "hour", "idle"]), default="traffic", show_default=True)
    @click.option("--duration", type=click.FloatRange(min=1), help="real seconds (traffic: default 60; "
                  "hour: stop early; idle: default until Ctrl-C)")
    @click.option("--rate", type=click.IntRange(1, 600), default=60, show_default=True,
                  help="simulated seconds per real second")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--heap", help="data budget of every board (default: each board file's heap_kb)")
    @click.option("--faults/--no-faults", default=True, show_default=True,
                  help="a network outage and a power cut (scenarios of 15 simulated minutes or more)")
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="use the operator's broker (--broker, its cloud listener): device users are added "
                       "to BROKER_DIR/passwd (`edgepay broker conf` layout)")
    @click.option("--device-port", type=click.IntRange(1, 65535), default=DEVICE_PORT, show_default=True,
                  help="with --broker-dir: the broker's device listener")
    @click.option("--reload-pid", type=int, help="with --broker-dir: mosquitto's pid, sent SIGHUP after adding users")
    @click.option("--keep", type=click.Path(file_okay=False), help="keep the site's files here")
    @click.pass_obj
    def sim(o: Ctx, gates: int, vending: int, rental: int, scenario: str, duration: float | None, rate: int,
            seed: int, heap: str | None, faults: bool, broker_dir: Path | None, device_port: int,
            reload_pid: int | None, keep: str | None) -> None:
        """Run simulated boards with a live view, then reconcile their sessions.

        With --json: one JSON object per event line, the reconciliation as the last line.
        Exit 0 when every session reconciles, 1 otherwise.
        """
        from host_tools.cli.simrun import run_site
        devices = ([(f"gate-{i + 1}", "gate") for i in range(gates)]
                   + [(f"vend-{i + 1}", "vending") for i in range(vending)]
                   + [(f"rent-{i + 1}", "rental") for i in range(rental)])
        if not devices:
            fail("no boards: give --gates, --vending or --rental")
        if scenario == "traffic" and duration is None:
            duration = 60.0
        broker = None
        if broker_dir is not None:
            from host_tools.sim.world import ExternalBroker
            host, port = parse_hostport(o.broker, "--broker / EDGEPAY_BROKER")
            broker = ExternalBroker(host, port, device_port, broker_dir, reload_pid)
            o.need_password()
        rc = run_site(o, title=f"edgepay sim: {len(devices)} boards, {scenario}", devices=devices,
                      scenario=scenario, rate=rate, seed=seed, duration=duration, heap=heap, faults=faults,
                      root=keep, broker=broker)
        if rc:
            raise click.exceptions.Exit(rc)
