"""`edgepay ledger [sessions|totals|export|reconcile]` over host_tools.cloud.ledger_open.open_ledger(url):
a SQLite path (or sqlite:///path) or a postgresql:// URL. Money is printed as integer minor units,
times as ISO 8601 UTC (`2026-12-02T06:53:04Z`; --json keeps Unix seconds). On a terminal a table
whose cells wrap, never cut; piped, tab-separated lines with a header row and every value whole.

`export --from --to [--site P]` is a period's closed sessions for finance (host_tools/cloud/ledger_export.py).

`reconcile DEVICE JOURNAL` compares the ledger with a device's own records: JOURNAL is a JSON file
(a list, or JSON lines) of {"seq": n, "raw": "<envelope hex>"}. Exit 0 when they agree, 4 when
records are missing, extra or different.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from host_tools.cli.common import EXIT_UNREACHABLE, Ctx, fail

EXIT_DIFFERENCES = 4


def open_db(url: str):
    from host_tools.cloud.ledger_open import is_postgres, open_ledger, sqlite_path
    pg = is_postgres(url)
    if not pg and url != ":memory:":
        path = Path(sqlite_path(url))
        if not path.is_file():
            fail(f"no ledger at {path} (give --db or EDGEPAY_LEDGER: a SQLite path or a postgresql:// URL)")
    try:
        return open_ledger(url)
    except ImportError as e:
        fail(f"cannot open {url}: {e}")
    except Exception as e:  # noqa: BLE001 - sqlite3/psycopg errors: one clear line
        code = EXIT_UNREACHABLE if pg else 1
        fail(f"cannot open the ledger {url}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", code)


def iso_utc(t: int | float | None) -> str:
    """Unix seconds as ISO 8601 UTC with Z; '' for none (the export's form: ledger_export.iso)."""
    from host_tools.cloud.ledger_export import iso
    return "" if t is None or t == "" else iso(int(t))


def print_table(o: Ctx, title: str, cols: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> None:
    """A rich table on a terminal (cells fold, never truncated with an ellipsis); otherwise
    tab-separated lines, header first, so a pipe or a file gets every value whole."""
    if not o.console.is_terminal:
        click.echo("\t".join(cols))
        for row in rows:
            click.echo("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row))
        return
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in rows:
        t.add_row(*row)
    o.console.print(t)


def _read(ledger, fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - e.g. a SQLite file that is not a ledger
        fail(f"cannot read the ledger: {e}")


def register(cli: click.Group) -> None:
    @cli.group(invoke_without_command=True)
    @click.option("--db", envvar="EDGEPAY_LEDGER", default=str(Path("edgepay") / "ledger.db"),
                  show_default=True, show_envvar=True, help="SQLite path or postgresql:// URL")
    @click.pass_context
    def ledger(ctx: click.Context, db: str) -> None:
        """Sessions, totals and reconciliation from the money ledger (default: sessions)."""
        ctx.meta["edgepay.db"] = db
        if ctx.invoked_subcommand is None:
            ctx.invoke(sessions)

    def _db(ctx: click.Context) -> str:
        return ctx.meta["edgepay.db"]

    @ledger.command()
    @click.option("--device")
    @click.option("--state", type=click.Choice(["open", "closed"]))
    @click.pass_context
    def sessions(ctx: click.Context, device: str | None = None, state: str | None = None) -> None:
        """Sessions, one row each (opened, updated, closed)."""
        o: Ctx = ctx.obj
        led = open_db(_db(ctx))
        try:
            rows = _read(led, lambda: led.sessions(device))
        finally:
            led.close()
        if state:
            rows = [s for s in rows if s.state == state]
        data = [dict(vars(s)) for s in rows]

        def human() -> None:
            cols = ["device", "sid", "state", "payer", "amount", "t0", "t1", "offline", "reason"]
            out = []
            for s in rows:
                amount = "" if s.amount is None else f"{s.amount} {s.currency or ''}".strip()
                out.append([s.device, s.sid, s.state, s.payer or "", amount, iso_utc(s.t0), iso_utc(s.t1),
                            "yes" if s.offline else "", s.reason or ""])
            print_table(o, f"sessions ({len(rows)})", cols, out, right=("amount",))
        o.emit(data, human)

    @ledger.command()
    @click.option("--device")
    @click.option("--state", type=click.Choice(["open", "closed", "all"]), default="closed", show_default=True)
    @click.pass_context
    def totals(ctx: click.Context, device: str | None, state: str) -> None:
        """Sum of session amounts per currency (integer minor units)."""
        o: Ctx = ctx.obj
        led = open_db(_db(ctx))
        try:
            tot = _read(led, lambda: led.totals(device, None if state == "all" else state))
            count = _read(led, lambda: led.count(device))
        finally:
            led.close()

        def human() -> None:
            print_table(o, f"totals ({state} sessions{', ' + device if device else ''}; {count} records)",
                        ["currency", "amount (minor units)"], [[cur, f"{amount}"] for cur, amount in tot.items()],
                        right=("amount (minor units)",))
        o.emit({"totals": tot, "state": state, "device": device, "records": count}, human)

    @ledger.command()
    @click.option("--from", "since", required=True, help="start of the period (2026-11-01, ISO 8601 UTC, or Unix seconds)")
    @click.option("--to", "until", required=True, help="end of the period, not included")
    @click.option("--site", "sites", multiple=True, help="device-id prefix of a site (repeat; default: every site)")
    @click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write to this file (default: stdout)")
    @click.pass_context
    def export(ctx: click.Context, since: str, until: str, sites: tuple[str, ...], fmt: str, out: Path | None) -> None:
        """The closed sessions that ended in [--from, --to), for finance: CSV rows or JSON with totals
        per currency (integer minor units)."""
        from host_tools.cloud.ledger_export import ExportError, export as make_export, parse_time
        o: Ctx = ctx.obj
        try:
            t_from, t_to = parse_time(since), parse_time(until)
        except ExportError as e:
            fail(str(e))
        led = open_db(_db(ctx))
        try:
            try:
                exp = _read(led, lambda: make_export(led, t_from, t_to, sites or None))
            except ExportError as e:
                fail(str(e))
        finally:
            led.close()
        text = json.dumps(exp.as_json(), indent=1) + "\n" if (fmt == "json" or o.json) else exp.csv()
        if out is None:
            click.echo(text, nl=False)
        else:
            out.write_text(text)
            o.note(f"{exp.as_json()['count']} sessions, totals {exp.totals} -> {out}")

    @ledger.command()
    @click.argument("device")
    @click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--from-seq", type=click.IntRange(min=0), help="ledger side from this seq (a device forgets acked records)")
    @click.pass_context
    def reconcile(ctx: click.Context, device: str, journal: Path, from_seq: int | None) -> None:
        """Compare DEVICE's records in the ledger with the device's own JOURNAL file."""
        o: Ctx = ctx.obj
        items = load_journal(journal)
        led = open_db(_db(ctx))
        try:
            rec = _read(led, lambda: led.reconcile(device, items, from_seq=from_seq))
        finally:
            led.close()
        data = {"device": device, "ok": rec.ok, "missing": rec.missing, "extra": rec.extra,
                "mismatched": rec.mismatched, "journal_records": len(items)}

        def human() -> None:
            if rec.ok:
                o.console.print(f"[bold green]reconciled[/] {device}: {len(items)} journal records all in the ledger")
            else:
                o.console.print(f"[bold red]differences[/] {device}: missing {rec.missing}, extra {rec.extra}, "
                                f"mismatched {rec.mismatched}")
        o.emit(data, human)
        if not rec.ok:
            raise click.exceptions.Exit(EXIT_DIFFERENCES)


def load_journal(path: Path) -> list[tuple[int, bytes]]:
    text = path.read_text()
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except ValueError:
        try:
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except ValueError as e:
            fail(f"{path} is neither JSON nor JSON lines: {e}")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("seq"), int) or not isinstance(it.get("raw"), str):
            fail(f"{path}: entry {i} is not {{\"seq\": int, \"raw\": hex}}")
        try:
            out.append((it["seq"], bytes.fromhex(it["raw"])))
        except ValueError:
            fail(f"{path}: entry {i} raw is not hex")
    return out
