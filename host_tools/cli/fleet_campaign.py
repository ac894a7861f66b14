"""A fleet-wide operation as a campaign on the rollout engine, for the commands that take
`--all/--kind/--board` (`edgepay device rekey`, `edgepay release push-keys`): the same options
(`@fleet_options(id_help)`), the fleet selected from the registry, the campaign created, then
carried here until final (or only created with --no-wait, for `edgepay campaign run`); `edgepay
campaign status|pause|resume|cancel ID` work on it. Exit codes as `campaign run`'s: 0 done, 5
halted or cancelled."""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, fail


def fleet_options(id_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--all/--kind/--board, --id (`id_help`: its default), --cohorts, --rate, --abort-share,
    --no-wait, --every and --db, as every fleet command spells them."""
    opts = [
        click.option("--all", "every", is_flag=True, help="the whole fleet (every active device), as a campaign"),
        click.option("--kind", help="every active device of this kind, as a campaign"),
        click.option("--board", help="every active device on this board, as a campaign"),
        click.option("--id", "cid", help=f"the campaign's id [{id_help}]"),
        click.option("--cohorts", default="5,25,50,100", show_default=True, help="rising percentages ending at 100"),
        click.option("--rate", type=float, default=60.0, show_default=True, help="devices started per minute at most"),
        click.option("--abort-share", type=float, default=0.2, show_default=True,
                     help="halt once this share of the finished devices failed"),
        click.option("--no-wait", is_flag=True, help="create the campaign only (edgepay campaign run carries it)"),
        click.option("--every", "every_s", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
                     help="seconds between the campaign runner's passes"),
        click.option("--db", default=lambda: os.environ.get("EDGEPAY_LEDGER", "edgepay/ledger.db"),
                     show_default="EDGEPAY_LEDGER or edgepay/ledger.db", help="the campaigns' database (the ledger's)"),
    ]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return wrap


def fleet(o: Ctx, kind: str | None, board: str | None) -> list[str]:
    """Every active device of the registry (of `kind`, on `board`), in id order."""
    reg = o.open_registry()
    try:
        targets, after = [], ""
        while True:
            page = reg.page(after=after, limit=1000, status="active", kind=kind, board=board)
            if not page:
                break
            targets += [d.device_id for d in page]
            after = page[-1].device_id
    finally:
        reg.close()
    return targets


def fleet_campaign(o: Ctx, action: str, spec: dict, *, kind: str | None, board: str | None, cid: str | None,
                   id_format: str, what: str, cohorts: str, rate: float, abort_share: float, timeout_s: float,
                   no_wait: bool, every_s: float, db: str) -> None:
    """Create the campaign of `action` with `spec` over the selected fleet (`what`: what there is
    nothing to do when no device matches; `id_format`: strftime of the default id; `timeout_s`: a
    device's budget), then carry it to its end and exit as `campaign run` does."""
    from host_tools.cli.campaign import _engine, _exit_for, _line, _store, _summary, parse_cohorts, run_loop
    from host_tools.cloud.rollout import RolloutError
    pct = parse_cohorts(cohorts)
    targets = fleet(o, kind, board)
    if not targets:
        fail(f"no active device matches: nothing to {what}")
    cid = cid or time.strftime(id_format, time.gmtime())
    store = _store(db, create=True)
    try:
        try:
            c = _engine(store).create(cid, action, spec, targets, cohorts=pct, rate=rate, timeout_s=timeout_s,
                                      abort_share=abort_share)
        except RolloutError as e:
            fail(str(e) + (" (give --id)" if "exists" in str(e) else ""), EXIT_USAGE)
        if no_wait:
            o.emit(_summary(c), lambda: o.console.print(f"[bold green]created[/] {_line(c)}"))
            return
        o.note(f"created {_line(c)}")
        from host_tools.cli.cmd import connect
        reg, client = connect(o)
        try:
            final = run_loop(o, _engine(store, client), store, every_s, watch=cid)[0]
        finally:
            client.close()
            reg.close()
    finally:
        store.close()
    if o.json:
        o.jsonline(_summary(final))
    else:
        o.console.print(_line(final))
    code = _exit_for(final)
    if code:
        raise click.exceptions.Exit(code)
