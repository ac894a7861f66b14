"""What `edgepay sim` and `edgepay demo` share: build a World, play a scenario under a view, and
reconcile."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from host_tools.cli.common import Ctx

DEMO_DEVICES = [("gate-1", "gate"), ("vend-1", "vending"), ("rent-1", "rental")]
CUSTOMERS = {"car_in": "plate", "vend": "payer", "rent": "payer"}   # the plan's jobs that bring a customer


def payment_success(runner: Any, rows: list[dict], played_to: float) -> dict:
    """The site's payment success rate: every customer the plan brought by `played_to` (simulated
    seconds into the plan) is one attempt (a car at the entry, a cabinet customer, a renter),
    however often its board retried; those whose account the provider refuses are left out; an
    attempt succeeds when its session (device, payer) is in the ledger closed and reconciled (the
    row's amounts agree, it settled, no flag), by the end of the run and its drain."""
    refused = set(runner.plan.refused)
    ok_rows = {(r["device"], r["payer"]) for r in rows if r["ok"] and r["state"] == "closed"}
    attempts = left_out = ok = 0
    failed: list[str] = []
    for j in runner.plan.jobs:
        who = CUSTOMERS.get(j.action)
        if who is None or j.at > played_to:
            continue
        dev, payer = j.actor.split("/")[0], j.args[who]
        attempts += 1
        if runner.plan.binds.get(payer) in refused:
            left_out += 1
        elif (dev, payer) in ok_rows:
            ok += 1
        else:
            failed.append(f"{dev}/{payer}")
    asked = attempts - left_out
    return {"rate": round(ok / asked, 6) if asked else None, "attempts": attempts, "refused": left_out,
            "succeeded": ok, "failed": len(failed), "failures": failed[:20]}


class _ToEvents(logging.Handler):
    """Cloud-side errors (edgepay.* loggers) into the world's event log, not onto the terminal."""

    def __init__(self, world: Any):
        super().__init__(logging.ERROR)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.world.event("cloud", "cloud error", record.getMessage()[:160])
        except Exception:  # noqa: BLE001
            pass


def quiet_cloud_logs(world: Any) -> logging.Handler:
    log = logging.getLogger("edgepay")
    h = _ToEvents(world)
    log.addHandler(h)
    log.propagate = False  # flags are in the report; warnings would break the live view
    return h


def run_site(o: Ctx, *, title: str, devices: list[tuple[str, str]], scenario: str, rate: float, seed: int,
             duration: float | None, heap: str | None, faults: bool, root: str | None = None,
             broker: Any = None, cloud: tuple[str, str] | None = None, require: bool = False) -> int:
    """Run a site; print the reconciliation; 0 when it reconciles (and, with `require`, when every
    kind had sessions and the outage and power cut happened), else 1."""
    from host_tools.sim.dashboard import View, print_report
    from host_tools.sim.scenarios import SPAN, TAIL, UPDATE, Runner, hour_plan
    from host_tools.sim.world import World

    mode = View.pick(o.json, o.console)
    if mode == "lines":  # a log or a pipe: wide enough for the report's table
        from rich.console import Console
        o.console = Console(highlight=False, soft_wrap=False, width=150)
    view = View(mode, title, o.console)
    stop = threading.Event()
    kw: dict[str, Any] = {}
    if broker is not None:
        kw["broker"] = broker
        kw["cloud_user"], kw["cloud_password"] = cloud or (o.user, o.password)
    world = World(root, rate=rate, seed=seed, heapsize=heap, on_event=view.on_event, **kw)
    view.attach(world)
    t_start = time.monotonic()
    handler = quiet_cloud_logs(world)
    runner = None
    rep: dict[str, Any]
    try:
        with view:
            world.start()
            world.add_devices(devices)
            timer = None
            if duration:
                timer = threading.Timer(duration, stop.set)
                timer.daemon = True
                timer.start()
            if scenario == "idle":
                stop.wait(duration or None)
            else:
                span = SPAN if scenario == "hour" else max(300, int((duration or 60) * rate) - TAIL)
                plan = hour_plan(seed, devices, span=span, faults=faults)
                runner = Runner(world, plan, stop)
                runner.run()
            if timer is not None:
                timer.cancel()
            world.phase = "settling"
            world.event("site", "closing", "the scenario is over: waiting for every journal to drain")
            drained = world.drain(30)
            world.phase = "reconciling"
            rep = world.reconcile(runner.expected() if runner else None)
            if runner is not None:   # the duration's end is closing time: nobody is left inside
                rep["problems"] += runner.problems()
                if runner.plan.update is not None:  # and every device runs the hour's release
                    rep["problems"] += [f"{n}: runs {v}, not {UPDATE[0]}" for n, v in rep["firmware"].items()
                                        if v != UPDATE[0]]
            if not drained:
                rep["problems"].append("the journals did not drain within 30 s")
            if runner is not None:
                rep["activity"] = dict(sorted(runner.counts.items()))
                rep["payments"] = payment_success(runner, rep["rows"], world.clock.elapsed() - runner.t0)
                rep["payment_success_rate"] = rep["payments"]["rate"]
            if require:
                for _, kind in devices:
                    if not rep["by_kind"].get(kind):
                        rep["problems"].append(f"no {kind} sessions")
                if faults and not rep["outages"]:
                    rep["problems"].append("the network outage did not happen")
                if faults and not rep["power_cuts"]:
                    rep["problems"].append("the power cut did not happen")
            rep["ok"] = not rep["problems"]
            rep["seconds"] = round(time.monotonic() - t_start, 1)
            rep["rate"], rep["seed"], rep["scenario"] = rate, seed, scenario
    except KeyboardInterrupt:
        stop.set()
        o.note("interrupted")
        return 130
    finally:
        stop.set()
        logging.getLogger("edgepay").removeHandler(handler)
        world.close()
    if o.json:
        sys.stdout.write(json.dumps(dict(rep, type="reconciliation"), sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    else:
        print_report(rep, o.console)
        o.console.print(f"{rep['seconds']} s")
    return 0 if rep["ok"] else 1
