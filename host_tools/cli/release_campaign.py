"""`edgepay release push-keys --file LIST --all/--kind/--board`: a release key list rolled out to a
fleet as a campaign of the action "keylist" (host_tools/cloud/keylist_action.py) on the rollout
engine, as `edgepay device rekey --kind` rolls out key rotations: created, then carried here until
final (or only created with --no-wait, for `edgepay campaign run`); `edgepay campaign
status|pause|resume|cancel ID` work on it. Exit codes as `campaign run`'s: 0 done, 5 halted or
cancelled."""
from __future__ import annotations

import time

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, fail


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


def keylist_campaign(o: Ctx, raw: bytes, kind: str | None, board: str | None, cid: str | None, cohorts: str,
                     rate: float, abort_share: float, timeout: float, no_wait: bool, every_s: float, db: str) -> None:
    from host_tools.cli.campaign import _engine, _exit_for, _line, _store, _summary, parse_cohorts, run_loop
    from host_tools.cloud.keylist_action import ACTION, KeylistAction
    from host_tools.cloud.rollout import RolloutError
    pct = parse_cohorts(cohorts)
    spec = KeylistAction.spec(raw, ttl=max(1, int(timeout)))
    targets = fleet(o, kind, board)
    if not targets:
        fail("no active device matches: nothing to send the list to")
    cid = cid or time.strftime(f"keys-v{spec['v']}-%Y%m%dT%H%M%S", time.gmtime())
    store = _store(db, create=True)
    try:
        try:  # a device's budget: its answer, and the wait for a link
            c = _engine(store).create(cid, ACTION, spec, targets, cohorts=pct, rate=rate, timeout_s=timeout + 5,
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
