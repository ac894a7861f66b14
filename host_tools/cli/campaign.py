"""`edgepay campaign`: roll a signed command out to many devices in cohorts, at a rate, halting by
itself past a failure share (host_tools/cloud/rollout.py; states in the ledger's database, so a
campaign survives a restart: `run` picks it up where it was).

    edgepay campaign create hb60 set_config hb_s=60 --kind gate --cohorts 5,25,50,100 --rate 30
    edgepay campaign run                  # the runner: until every campaign is final (--forever)
    edgepay campaign status [ID] [--json]
    edgepay campaign pause|resume|cancel ID
Firmware update campaigns (`edgepay ota deploy`) are campaigns of the action "ota", fleet key
rotations (`edgepay device rekey --kind/--board/--all`) of the action "rekey", release key lists
(`edgepay release push-keys --file L --kind/--board/--all`) of the action "keylist": run, status,
pause and resume here work on them too (`edgepay ota cancel` also sends each started device
ota_abort; `campaign cancel` does not reach the devices).
Exit code of `run` and `status ID`: 0 done, 5 halted or cancelled, 6 still live (status only).
"""
from __future__ import annotations

import os
import threading

import click

from host_tools.cloud import cmdspec
from host_tools.cli.common import EXIT_USAGE, Ctx, fail

EXIT_HALTED, EXIT_LIVE = 5, 6
DEFAULT_DB = "edgepay/ledger.db"


def parse_cohorts(cohorts: str) -> list[int]:
    """--cohorts "5,25,50,100" -> [5, 25, 50, 100] (the engine checks they rise to 100)."""
    try:
        return [int(p) for p in cohorts.split(",")]
    except ValueError:
        fail(f"--cohorts {cohorts!r}: comma-separated whole percentages, e.g. 5,25,50,100", EXIT_USAGE)


def _store(url: str, create: bool = False):
    from pathlib import Path

    from host_tools.cloud.ledger_open import is_postgres, sqlite_path
    from host_tools.cloud.rollout_store import RolloutStore
    if not is_postgres(url) and not create:
        path = Path(sqlite_path(url))
        if not path.is_file():
            fail(f"no database at {path} (give --db or EDGEPAY_LEDGER)")
    try:
        return RolloutStore.open(url)
    except Exception as e:  # noqa: BLE001 - sqlite3/psycopg errors: one clear line
        fail(f"cannot open {url}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")


def _engine(store, client=None):
    """The engine with every action this CLI knows: the command campaign's and the firmware
    update's (`edgepay ota`); without a client, stand-ins that send nothing (create, status...)."""
    from host_tools.cloud.rollout import CommandAction, Rollouts
    if client is None:
        return Rollouts(store, {"command": _NoAction(), "ota": _NoAction(), "rekey": _NoAction(),
                                "keylist": _NoAction()})
    from host_tools.cloud.keylist_action import KeylistAction
    from host_tools.cloud.ota_action import OtaAction, OtaProgress
    from host_tools.cloud.rekey import RekeyAction
    return Rollouts(store, {"command": CommandAction(client), "ota": OtaAction(client, OtaProgress(store.db)),
                            "rekey": RekeyAction(client), "keylist": KeylistAction(client)})


class _NoAction:
    """Stands in for the command action where nothing is sent (create, status, pause...)."""

    def start(self, c, device):
        raise RuntimeError("not a runner")

    def poll(self, c, device):
        return None

    def abort(self, c, device):
        pass


def _summary(c) -> dict:
    return {"id": c.id, "action": c.action, "spec": c.spec, "state": c.state, "reason": c.reason,
            "cohorts": c.cohorts, "rate_per_min": c.rate, "timeout_s": c.timeout_s,
            "abort_share": c.abort_share, "min_finished": c.min_finished, "counts": c.counts,
            "devices": sum(c.counts.values())}


def _line(c) -> str:
    n = sum(c.counts.values())
    done = sum(v for k, v in c.counts.items() if k not in ("pending", "started"))
    parts = ", ".join(f"{v} {k}" for k, v in sorted(c.counts.items()))
    return f"{c.id}  {c.state:<9} {done}/{n}  {parts}" + (f"  ({c.reason})" if c.reason else "")


def _exit_for(c) -> int:
    return 0 if c.state == "done" else EXIT_LIVE if not c.final else EXIT_HALTED


def operate(o: Ctx, store, cid: str, verb: str, client=None, action: str | None = None):
    """pause, resume or cancel campaign `cid` (with `client`, the actions abort for real: a cancel
    sends what their abort sends); `action`: refuse a campaign of another action. Closes nothing."""
    from host_tools.cloud.rollout import RolloutError
    ro = _engine(store, client)
    try:
        if action is not None and ro.status(cid).action != action:
            fail(f"campaign {cid!r} is a {ro.status(cid).action} campaign, not {action}")
        return getattr(ro, verb)(cid)
    except RolloutError as e:
        fail(str(e))


def control(o: Ctx, db: str, cid: str, verb: str, action: str | None = None):
    """`pause`, `resume` or `cancel` from the CLI (campaign's and ota's): a cancel of a live
    campaign connects to the broker, so its action's abort reaches the devices (a firmware
    campaign's ota_abort), whichever command group it came through. -> the campaign."""
    store = _store(db)
    reg = client = None
    try:
        if verb == "cancel":
            c0 = store.campaign(cid)
            if c0 is not None and not c0.final and action in (None, c0.action):  # else refused below
                from host_tools.cli.cmd import connect
                reg, client = connect(o)
        return operate(o, store, cid, verb, client, action=action)
    finally:
        if client is not None:
            client.close()
        if reg is not None:
            reg.close()
        store.close()


def run_loop(o: Ctx, ro, store, every: float, forever: bool = False, watch: str | None = None,
             line=None) -> list:
    """Tick until every live campaign is final (`forever`: until interrupted), printing each change
    (a JSON line per summary with --json, else a line on stderr); `watch`: report and wait for that
    campaign only. The campaigns at the end (only `watch` with it)."""
    show = line or _line
    stop = threading.Event()
    last: dict[str, str] = {}
    try:
        while True:
            cs = ro.tick()
            if watch is not None and not any(c.id == watch for c in cs):
                cs = [ro.status(watch)]
            for c in cs:
                if watch is not None and c.id != watch:
                    continue
                text = show(c)
                if last.get(c.id) != text:
                    last[c.id] = text
                    if o.json:
                        o.jsonline(_summary(c))
                    else:
                        o.note(text)
            if watch is not None:
                if not forever and ro.status(watch).final:
                    break
            elif not forever and not store.campaigns(live_only=True):
                break
            if stop.wait(every):
                break
    except KeyboardInterrupt:
        pass
    return [ro.status(watch)] if watch is not None else store.campaigns()


def register(cli: click.Group) -> None:
    db_opt = click.option("--db", default=lambda: os.environ.get("EDGEPAY_LEDGER", DEFAULT_DB),
                          show_default="EDGEPAY_LEDGER or edgepay/ledger.db",
                          help="the ledger's database: a SQLite path or a postgresql:// URL")

    @cli.group()
    def campaign() -> None:
        """Roll a signed command out to many devices, safely (cohorts, rate, abort threshold)."""

    @campaign.command()
    @click.argument("cid", metavar="ID")
    @click.argument("name")
    @click.argument("args", nargs=-1)
    @click.option("--device", "devices", multiple=True, help="a target device (repeat)")
    @click.option("--kind", help="every registered device of this kind (gate, vending, rental)")
    @click.option("--board", help="every registered device on this board")
    @click.option("--cohorts", default="5,25,50,100", show_default=True, help="rising percentages ending at 100")
    @click.option("--rate", type=float, default=60.0, show_default=True, help="starts per minute at most")
    @click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
                  help="seconds a device has to answer before it counts as timed out (a failure)")
    @click.option("--abort-at", "abort_share", type=float, default=0.2, show_default=True,
                  help="halt once this share of the finished devices failed")
    @click.option("--min-finished", type=int, default=None, help="...and at least this many finished [first cohort]")
    @click.option("--ttl", type=click.IntRange(min=1, max=86400), default=60, show_default=True,
                  help="each command's lifetime")
    @db_opt
    @click.pass_obj
    def create(o: Ctx, cid: str, name: str, args: tuple[str, ...], devices: tuple[str, ...], kind: str | None,
               board: str | None, cohorts: str, rate: float, timeout_s: float, abort_share: float,
               min_finished: int | None, ttl: int, db: str) -> None:
        """Create campaign ID: command NAME with ARGS (KEY=VALUE, as `edgepay cmd`) to the devices
        named, or every device of a kind or board in the registry. `edgepay campaign run` sends it."""
        from host_tools.cli.cmd import parse_args
        from host_tools.cloud.rollout import CommandAction, RolloutError
        try:
            cargs = cmdspec.check(name, parse_args(args))
        except cmdspec.ArgProblem as e:
            fail(str(e), EXIT_USAGE)
        pct = parse_cohorts(cohorts)
        reg = o.open_registry()
        try:
            known = {d.device_id: d for d in reg.devices()}
        finally:
            reg.close()
        targets = list(devices)
        unknown = [d for d in targets if d not in known]
        if unknown:
            fail(f"unknown device(s): {', '.join(unknown)}")
        if kind or board:
            targets += [d for d, dev in sorted(known.items()) if d not in targets
                        and (kind is None or dev.kind == kind) and (board is None or dev.board == board)]
        if not targets:
            fail("no devices: give --device, --kind or --board (of registered devices)", EXIT_USAGE)
        store = _store(db, create=True)
        try:
            c = _engine(store).create(cid, "command", CommandAction.spec(name, cargs, ttl), targets, cohorts=pct,
                                      rate=rate, timeout_s=timeout_s, abort_share=abort_share,
                                      min_finished=min_finished)
        except RolloutError as e:
            fail(str(e), EXIT_USAGE)
        finally:
            store.close()
        o.emit(_summary(c), lambda: o.console.print(f"[bold green]created[/] {_line(c)}"))

    @campaign.command()
    @click.argument("cid", metavar="ID", required=False)
    @db_opt
    @click.pass_obj
    def status(o: Ctx, cid: str | None, db: str) -> None:
        """Every campaign, or campaign ID with each device's state."""
        from host_tools.cloud.rollout import RolloutError
        store = _store(db)
        try:
            if cid is None:
                cs = store.campaigns()

                def listing() -> None:
                    for c in cs:
                        o.console.print(_line(c))
                    if not cs:
                        o.console.print("no campaigns")
                o.emit([_summary(c) for c in cs], listing)
                return
            try:
                c = _engine(store).status(cid)
            except RolloutError as e:
                fail(str(e))
            ts = store.targets(cid)
        finally:
            store.close()
        data = {**_summary(c), "targets": [{"device": t.device, "state": t.state, "reason": t.reason,
                                            "started_at": t.started_at, "finished_at": t.finished_at} for t in ts]}

        def human() -> None:
            o.console.print(_line(c))
            for t in ts:
                o.console.print(f"  {t.device:<20} {t.state:<10} {t.reason or ''}")
        o.emit(data, human)
        code = _exit_for(c)
        if code:
            raise click.exceptions.Exit(code)

    helps = {"pause": "Start no more devices of campaign ID (started ones still finish).",
             "resume": "Go on with paused campaign ID.",
             "cancel": "End campaign ID for good: started devices aborted (a firmware campaign's get ota_abort), "
                       "pending ones skipped."}

    def _op(verb: str):
        @campaign.command(verb, help=helps[verb])
        @click.argument("cid", metavar="ID")
        @db_opt
        @click.pass_obj
        def op(o: Ctx, cid: str, db: str) -> None:
            c = control(o, db, cid, verb)
            o.emit(_summary(c), lambda: o.console.print(_line(c)))
    for verb in ("pause", "resume", "cancel"):
        _op(verb)

    @campaign.command()
    @click.option("--forever", is_flag=True, help="keep running when every campaign is final (a service)")
    @click.option("--every", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="seconds between passes")
    @db_opt
    @click.pass_obj
    def run(o: Ctx, forever: bool, every: float, db: str) -> None:
        """Run the campaigns: send, wait for outcomes, open cohorts, halt past the threshold."""
        from host_tools.cli.cmd import connect
        store = _store(db)
        reg, client = connect(o)
        try:
            final = run_loop(o, _engine(store, client), store, every, forever)
        finally:
            client.close()
            reg.close()
            store.close()
        if not o.json:
            for c in final:
                o.console.print(_line(c))
        worst = max((_exit_for(c) for c in final), default=0)
        if worst:
            raise click.exceptions.Exit(worst)

