"""`edgepay ota`: firmware update campaigns (SPEC §10, issue 12 §3). A campaign of the rollout
engine (host_tools/cloud/rollout.py) whose action is the update (host_tools/cloud/ota_action.py):
the signed `ota` command with the release's manifest, then the devices' own signed events.

    edgepay ota deploy build/releases/sim-gate-1.4.0.manifest --board sim-gate --kind gate \\
        --cohorts 5,25,50,100 --rate 30 --timeout 1800 --abort-share 0.2 --serve-chunks
    edgepay ota status [ID] [--json]
    edgepay ota pause|resume|cancel ID

RELEASE is a release's .manifest (its .bin beside it, as `edgepay release build` writes them), its
.bin, its stem, or a directory holding exactly one release. `deploy` creates the campaign and runs
it until it is final (--no-wait: create only; `edgepay serve`'s campaigns part or `edgepay campaign
run` carries it on). Devices download from a chunk server: `edgepay serve`'s chunks part, or this
process with --serve-chunks (serving RELEASE's directory). Campaign states live in the ledger's
database (--db), so status, pause, resume and cancel work from any shell, and a restarted runner
goes on where it was. `cancel` also sends each started device ota_abort (it needs the broker).
Exit codes of deploy and status ID as `edgepay campaign`: 0 done, 5 halted or cancelled, 6 live.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from host_tools.cli.campaign import (DEFAULT_DB, _engine, _exit_for, _store, _summary, control, parse_cohorts,
                                     run_loop)
from host_tools.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail

ACTION = "ota"
DEFAULT_TIMEOUT_S = 5400.0   # a download, an install deferred up to ota_defer_s (3600), a reboot, the trial's confirmation
DONE_STATES = ("downloaded", "deferred", "installing", "installed", "confirmed")   # past the download


def find_release(path: Path):
    """(store, release) for RELEASE as the module doc says; a clear error otherwise."""
    from host_tools.cloud.chunkserver import ReleaseStore
    if path.is_dir():
        store = ReleaseStore(path)
        rels = store.releases()
        if len(rels) == 1:
            return store, rels[0]
        if not rels:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(store.problems.items())) or "no NAME.manifest with its NAME.bin"
            fail(f"no release in {path} ({why})")
        fail(f"{path} holds {len(rels)} releases ({', '.join(r.name for r in rels)}): name one, e.g. "
             f"{path / rels[0].name}.manifest")
    stem = path.with_suffix("") if path.suffix in (".manifest", ".bin") else path
    if not Path(f"{stem}.manifest").is_file():
        fail(f"no release {stem}.manifest (give a release's .manifest, .bin or directory)")
    store = ReleaseStore(stem.parent)
    r = store.find(stem.name)
    if r is None:
        fail(f"release {stem.name} cannot be served: {store.problems.get(stem.name + '.manifest', 'unreadable')}")
    return store, r


def _check_signature(r, pubs: tuple[Path, ...]) -> None:
    from host_tools.protocol.manifest import ManifestError, key_id, verify_manifest
    from host_tools.release import ReleaseError, load_public
    try:
        trusted = {key_id(k): k for k in (load_public(p) for p in pubs)}
    except ReleaseError as e:
        fail(str(e))
    try:
        verify_manifest(r.signed, trusted)
    except ManifestError as e:
        fail(f"release {r.name} refused: {e} (checked against --pub)")


def _targets(o: Ctx, r, devices: tuple[str, ...], board: str | None, kind: str | None) -> list[str]:
    m = r.manifest
    if devices and (board or kind):
        fail("give --device, or --board/--kind, not both", EXIT_USAGE)
    if not devices and not (board or kind):
        fail("no devices: give --device ID (repeat), or --board and --kind (the release's class)", EXIT_USAGE)
    for what, given, want in (("board", board, m.board), ("kind", kind, m.kind)):
        if given is not None and given != want:
            fail(f"--{what} {given}: release {r.name} is for {m.board}/{m.kind}", EXIT_USAGE)
    if len(set(devices)) != len(devices):
        fail("a device is named twice", EXIT_USAGE)
    reg = o.open_registry()
    try:
        known = {d.device_id: d for d in reg.page(limit=10 ** 9)}
    finally:
        reg.close()
    if not devices:
        out = [d for d, dev in sorted(known.items()) if (dev.board, dev.kind) == (m.board, m.kind) and dev.status == "active"]
        if not out:
            fail(f"no active registered device is a {m.board}/{m.kind}")
        return out
    unknown = [d for d in devices if d not in known]
    if unknown:
        fail(f"unknown device(s): {', '.join(unknown)}")
    for d in devices:
        dev = known[d]
        if (dev.board, dev.kind) != (m.board, m.kind):
            fail(f"device {d} is a {dev.board}/{dev.kind}: release {r.name} is for {m.board}/{m.kind}")
        if dev.status != "active":
            fail(f"device {d} is {dev.status}: it is sent nothing")
    return list(devices)


def _release_json(spec: dict) -> dict:
    return {k: spec.get(k) for k in ("release", "version", "seq", "board", "kind", "rel", "size", "chunk")}


def _line(c) -> str:
    n = sum(c.counts.values())
    done = sum(v for k, v in c.counts.items() if k not in ("pending", "started"))
    parts = ", ".join(f"{v} {k}" for k, v in sorted(c.counts.items()))
    return (f"{c.id}  {c.spec.get('release')} ({c.spec.get('version')})  {c.state:<9} {done}/{n}  {parts}"
            + (f"  ({c.reason})" if c.reason else ""))


def _targets_json(store, cid: str) -> list[dict]:
    from host_tools.cloud.ota_action import OtaProgress
    prog = OtaProgress(store.db).all(cid)
    return [{"device": t.device, "state": t.state, "reason": t.reason, "started_at": t.started_at,
             "finished_at": t.finished_at, "ota": prog[t.device].to_json() if t.device in prog else None}
            for t in store.targets(cid)]


def _bar(done: float, total: float, width: int = 24):
    from rich.progress_bar import ProgressBar
    return ProgressBar(total=max(total, 1), completed=min(done, total), width=width)


def _render_campaigns(o: Ctx, cs: list) -> None:
    from rich.table import Table
    if not cs:
        o.console.print("no firmware campaigns")
        return
    t = Table(box=None, pad_edge=False)
    for col in ("campaign", "release", "state", "", "done", "counts"):
        t.add_column(col)
    for c in cs:
        n = sum(c.counts.values())
        done = sum(v for k, v in c.counts.items() if k not in ("pending", "started"))
        t.add_row(c.id, f"{c.spec.get('release')} ({c.spec.get('version')})", c.state, _bar(done, n), f"{done}/{n}",
                  ", ".join(f"{v} {k}" for k, v in sorted(c.counts.items())) + (f"  ({c.reason})" if c.reason else ""))
    o.console.print(t)


def _render_targets(o: Ctx, c, targets: list[dict]) -> None:
    from rich.table import Table
    _render_campaigns(o, [c])
    t = Table(box=None, pad_edge=False)
    for col in ("device", "target", "update", "", "chunks", "why"):
        t.add_column(col)
    for x in targets:
        p = x["ota"] or {}
        st, n, of = p.get("st"), p.get("n"), p.get("of")
        if st in DONE_STATES and of:
            n = of
        t.add_row(x["device"], x["state"], st or "", _bar(n or 0, of or 1) if of else "",
                  f"{n}/{of}" if of else "", x["reason"] or p.get("why") or "")
    o.console.print(t)


def register(cli: click.Group) -> None:
    db_opt = click.option("--db", default=lambda: os.environ.get("EDGEPAY_LEDGER", DEFAULT_DB),
                          show_default="EDGEPAY_LEDGER or edgepay/ledger.db",
                          help="the ledger's database: a SQLite path or a postgresql:// URL")

    @cli.group()
    def ota() -> None:
        """Firmware updates: signed releases rolled out in cohorts, at a rate, halting past a failure share."""

    @ota.command()
    @click.argument("release", type=click.Path(path_type=Path))
    @click.option("--device", "devices", multiple=True, help="a target device (repeat)")
    @click.option("--board", help="every active registered device on this board (the release's)")
    @click.option("--kind", help="... of this kind (the release's)")
    @click.option("--id", "cid", help="the campaign's id [ota-RELEASE]")
    @click.option("--cohorts", default="5,25,50,100", show_default=True, help="rising percentages ending at 100")
    @click.option("--rate", type=float, default=60.0, show_default=True, help="devices started per minute at most")
    @click.option("--timeout", "timeout_s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
                  help="seconds a device has to confirm (download, deferral, trial) before it counts as timed out")
    @click.option("--abort-share", type=float, default=0.2, show_default=True,
                  help="halt once this share of the finished devices failed or timed out")
    @click.option("--min-finished", type=int, default=None, help="...and at least this many finished [first cohort]")
    @click.option("--ttl", type=click.IntRange(min=1, max=600), default=60, show_default=True,
                  help="each ota command's lifetime")
    @click.option("--pub", "pubs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="check the manifest against this trusted release public key first (repeat)")
    @click.option("--serve-chunks", is_flag=True, help="answer the devices' chunk requests from this process")
    @click.option("--no-wait", is_flag=True, help="create the campaign only (a runner elsewhere carries it)")
    @click.option("--every", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="seconds between passes")
    @db_opt
    @click.pass_obj
    def deploy(o: Ctx, release: Path, devices: tuple[str, ...], board: str | None, kind: str | None, cid: str | None,
               cohorts: str, rate: float, timeout_s: float, abort_share: float, min_finished: int | None, ttl: int,
               pubs: tuple[Path, ...], serve_chunks: bool, no_wait: bool, every: float, db: str) -> None:
        """Roll RELEASE out to the devices named, or to every device of its class."""
        from host_tools.cloud.ota_action import OtaAction
        from host_tools.cloud.rollout import RolloutError
        if serve_chunks and no_wait:
            fail("--serve-chunks serves while this process runs the campaign: not with --no-wait", EXIT_USAGE)
        pct = parse_cohorts(cohorts)
        rstore, r = find_release(release)
        if pubs:
            _check_signature(r, pubs)
        targets = _targets(o, r, devices, board, kind)
        cid = cid or f"ota-{r.name}"
        store = _store(db, create=True)
        try:
            try:
                c = _engine(store).create(cid, ACTION, OtaAction.spec(r.signed, r.manifest, r.name, ttl), targets,
                                          cohorts=pct, rate=rate, timeout_s=timeout_s, abort_share=abort_share,
                                          min_finished=min_finished)
            except RolloutError as e:
                fail(str(e) + (" (give --id)" if "exists" in str(e) else ""), EXIT_USAGE)
            if no_wait:
                o.emit(_summary(c), lambda: o.console.print(f"[bold green]created[/] {_line(c)}"))
                return
            o.note(f"created {_line(c)}")
            final = _run(o, store, rstore if serve_chunks else None, cid, every)
        finally:
            store.close()
        if o.json:
            o.jsonline({**_summary(final), "release": _release_json(final.spec)})
        else:
            o.console.print(_line(final))
        code = _exit_for(final)
        if code:
            raise click.exceptions.Exit(code)

    def _run(o: Ctx, store, chunks, cid: str, every: float):
        from host_tools.cli.cmd import connect
        from host_tools.cloud.chunkserver import ChunkServer
        from host_tools.cloud.mqtt import BrokerUnreachable
        reg, client = connect(o)
        cs = None
        try:
            if chunks is not None:  # its own connection: chunk traffic never queues command results
                try:
                    cs = ChunkServer.connect(reg, client.mqtt.settings, chunks)
                except BrokerUnreachable as e:
                    fail(str(e), EXIT_UNREACHABLE)
                o.note(f"serving chunks of {len(chunks.releases())} release(s) from {chunks.root}")
            return run_loop(o, _engine(store, client), store, every, watch=cid, line=_line)[0]
        finally:
            if cs is not None:
                cs.close()
            client.close()
            reg.close()

    @ota.command()
    @click.argument("cid", metavar="[ID]", required=False)
    @db_opt
    @click.pass_obj
    def status(o: Ctx, cid: str | None, db: str) -> None:
        """Every firmware campaign, or campaign ID with each device's update state and progress."""
        store = _store(db)
        try:
            if cid is None:
                cs = [c for c in store.campaigns() if c.action == ACTION]
                o.emit([{**_summary(c), "release": _release_json(c.spec)} for c in cs], lambda: _render_campaigns(o, cs))
                return
            c = store.campaign(cid)
            if c is None:
                fail(f"no campaign {cid!r}")
            if c.action != ACTION:
                fail(f"campaign {cid!r} is a {c.action} campaign: see edgepay campaign status")
            targets = _targets_json(store, cid)
        finally:
            store.close()
        o.emit({**_summary(c), "release": _release_json(c.spec), "targets": targets},
               lambda: _render_targets(o, c, targets))
        code = _exit_for(c)
        if code:
            raise click.exceptions.Exit(code)

    helps = {"pause": "Start no more devices of campaign ID (started ones still finish).",
             "resume": "Go on with paused campaign ID.",
             "cancel": "End campaign ID for good: started devices are sent ota_abort, pending ones skipped."}

    def _op(verb: str):
        @ota.command(verb, help=helps[verb])
        @click.argument("cid", metavar="ID")
        @db_opt
        @click.pass_obj
        def op(o: Ctx, cid: str, db: str) -> None:
            c = control(o, db, cid, verb, action=ACTION)
            o.emit({**_summary(c), "release": _release_json(c.spec)}, lambda: o.console.print(_line(c)))
    for verb in ("pause", "resume", "cancel"):
        _op(verb)
