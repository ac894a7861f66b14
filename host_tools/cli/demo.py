"""`edgepay demo`: the whole system in one command on a fresh machine.

Starts Mosquitto on a free loopback port, an SQLite ledger, the registry, an ingest worker, the
scripted pay-after provider and the session service; provisions a parking gate, a vending cabinet
and a rental station (their sim board files) and runs their firmware on the MicroPython VM; plays
an hour of traffic at high speed (host_tools/sim/scenarios.py: cars with pay-after plates and
unknown plates paying by QR, cabinet customers, rentals, a network outage, a power cut, and a
signed firmware update rolled to all three, the gate's install deferred by a car under its barrier)
with a live dashboard (plain lines when stdout is not a terminal, JSON lines with --json); then
prints the reconciliation: every session in the ledger, the amount its device signed, the ledger's,
what the provider charged and what the script expected; flags; the firmware each device runs.
Exit 0 when it all reconciles and every device runs the update, 1 otherwise.
"""
from __future__ import annotations


import click

from host_tools.cli.common import Ctx


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--rate", type=click.IntRange(1, 600), default=90, show_default=True,
                  help="simulated seconds per real second (the hour takes 3600/RATE s)")
    @click.option("--seed", type=int, default=7, show_default=True, help="the scenario's seed (deterministic)")
    @click.option("--heap", default="96K", show_default=True,
                  help="every board's data budget (the 64K gate/vending budgets run out under this traffic: "
                       "bench/app_heap.py)")
    @click.option("--keep", type=click.Path(file_okay=False), help="keep the site (ledger, registry, consoles) here")
    @click.pass_obj
    def demo(o: Ctx, rate: int, seed: int, heap: str, keep: str | None) -> None:
        """Run a parking gate, a vending cabinet and a rental station through a simulated hour
        (with a network outage, a power cut and a firmware update) and reconcile every session.

        With --json: one JSON object per event, the reconciliation as the last line.
        """
        from host_tools.cli.simrun import DEMO_DEVICES, run_site
        rc = run_site(o, title="edgepay demo: an hour at a site", devices=DEMO_DEVICES, scenario="hour",
                      rate=rate, seed=seed, duration=None, heap=heap, faults=True, root=keep, require=True)
        if rc:
            raise click.exceptions.Exit(rc)
