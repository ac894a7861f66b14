"""`edgepay sim`: simulated boards of chosen kinds (the firmware on the MicroPython VM) against a
broker (its own Mosquitto, or an operator's with --broker-dir), with the whole cloud side (ingest,
ledger, pay-after provider, session service) and a live view: device, kind, state, online, last
event, journal depth, sessions. Scenarios: `traffic` (for --duration real seconds), `hour` (an
hour at a site, with a network outage and a power cut), `idle` (boards only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from host_tools.broker import DEVICE_PORT
from host_tools.cli.common import Ctx, fail, parse_hostport


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--gates", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--vending", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--rental", type=click.IntRange(0, 20), default=1, show_default=True)
    @click.option("--scenario", type=click.Choice(["traffic", "hour", "idle", "storm"]), default="traffic",
                  show_default=True, help="boards: traffic, hour, idle; --fleet: traffic, idle, storm")
    @click.option("--fleet", type=click.IntRange(1, 50000), help="N protocol-level devices (gate, vending, "
                  "rental mixed 4:3:3) instead of VM boards")
    @click.option("--seconds", type=click.FloatRange(min=1), default=30.0, show_default=True,
                  help="--fleet: real seconds of traffic (then every session closes and journals drain)")
    @click.option("--procs", type=click.IntRange(1, 16), help="--fleet: device processes [1 up to 1,500 devices, else 2]")
    @click.option("--every", type=click.FloatRange(min=0.5), help="--fleet: real seconds between a device's "
                  "customers on average [max(8, N/25)]")
    @click.option("--with-boards", is_flag=True, help="--fleet: also the --gates/--vending/--rental VM boards "
                  "(the firmware) in the same site, playing its scenario beside the fleet")
    @click.option("--storm-at", type=click.FloatRange(min=0), help="--fleet: a reconnect storm this many seconds "
                  "into the traffic (the storm scenario: half way)")
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
            reload_pid: int | None, keep: str | None, fleet: int | None, seconds: float, procs: int | None,
            every: float | None, storm_at: float | None, with_boards: bool) -> None:
        """Run simulated boards with a live view, then reconcile their sessions.

        With --json: one JSON object per event line, the reconciliation as the last line.
        Exit 0 when every session reconciles, 1 otherwise.
        """
        if fleet is not None:
            if scenario == "hour":
                fail("--fleet plays traffic, idle or storm")
            ext = None
            if broker_dir is not None:  # the fleet's users go into BROKER_DIR/passwd at once, one reload
                from host_tools.sim.world import ExternalBroker
                host, port = parse_hostport(o.broker, "--broker / EDGEPAY_BROKER")
                ext = ExternalBroker(host, port, device_port, broker_dir, reload_pid)
                o.need_password()
            boards = ([(f"gate-{i + 1}", "gate") for i in range(gates)]
                      + [(f"vend-{i + 1}", "vending") for i in range(vending)]
                      + [(f"rent-{i + 1}", "rental") for i in range(rental)]) if with_boards else []
            rc = run_fleet(o, fleet, scenario, seconds, rate, seed, procs, every, storm_at, keep, boards,
                           ext, (o.user, o.password) if ext is not None else None)
            if rc:
                raise click.exceptions.Exit(rc)
            return
        if scenario == "storm":
            fail("the storm scenario is for --fleet")
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


def run_fleet(o: Ctx, n: int, scenario: str, seconds: float, rate: int, seed: int, procs: int | None,
              every: float | None, storm_at: float | None, keep: str | None,
              boards: list[tuple[str, str]] | None = None, broker: Any = None,
              cloud: tuple[str, str | None] | None = None) -> int:
    """`edgepay sim --fleet N`: the live summary (stderr, or JSON lines), the reconciliation last."""
    import logging

    from host_tools.sim.fleet import Fleet
    logging.getLogger("edgepay").setLevel(logging.ERROR)  # flags are in the report

    def line(text: str) -> None:
        if o.json:
            o.jsonline({"type": "summary", "line": text})
        else:
            o.console.print(text, markup=False)
    f = Fleet(n, scenario=scenario, seconds=seconds, rate=rate, seed=seed, procs=procs, every=every, root=keep,
              boards=boards, broker=broker, cloud=cloud)
    line(f"edgepay sim --fleet {n}: {scenario} for {seconds:g} s, {f.procs} device process(es), clock x{rate}"
         + (f", {len(boards)} VM boards" if boards else ""))
    try:
        with f:
            rep = f.run(on_line=line, storm_at=storm_at)
    except KeyboardInterrupt:
        o.note("interrupted")
        return 130
    if o.json:
        o.jsonline(dict(rep, type="reconciliation"))
    else:
        t = rep["totals"]
        o.console.print(f"reconciliation: {rep['records']} records of {n} devices, {rep['sessions']} sessions; "
                        f"devices {t['device']}, ledger {t['ledger']}, charged {t['charged']} (minor units {t['cur']}); "
                        f"commands p50 {rep['commands']['p50_ms']} p99 {rep['commands']['p99_ms']} ms; "
                        f"{'OK' if rep['ok'] else 'MISMATCH'}", markup=False)
        pay = rep.get("payments")
        if pay and pay["rate"] is not None:
            o.console.print(f"payment success {pay['rate']:.4f}: {pay['succeeded']} of {pay['attempts'] - pay['refused']} "
                            f"customers settled and reconciled ({pay['attempts']} came, {pay['refused']} refused by "
                            f"the cloud, left out; {pay.get('waited', 0)} waited for their device; failed: {pay['turned_away']} turned away, {pay['unanswered']} "
                            f"unanswered, {pay['not_reconciled']} not reconciled, {pay['errors']} errors)", markup=False)
        if rep.get("boards"):
            b = rep["boards"]
            o.console.print(f"VM boards: {b['sessions']} sessions {b['by_kind']}, totals {b['totals']}", markup=False)
        for p in rep["problems"]:
            o.console.print(f"  {p}", markup=False)
    return 0 if rep["ok"] else 1
