"""`edgepay journal export --port PORT`: the money records a board still holds (journaled, not yet
acknowledged by the cloud), read over its serial port, as JSON lines {"seq": n, "raw": "<envelope
hex>"}: the JOURNAL format of `edgepay ledger reconcile DEVICE JOURNAL`.

The board is soft-reset into the raw REPL (the agent stops cleanly, as `flash` does), the journal
is opened the way the agent opens it (firmware/agent.py _open_journal: its own littlefs, the
board's journal capacity) and read with Journal.pending(); then the board is soft-reset so the
agent starts again (--no-reset to leave it at the REPL). Nothing on the board is written but what
opening the journal writes at every boot (littlefs recovery).

`--board-dir DIR` reads a stopped simulated board's journal from its flash image instead
(host_tools/sim/flashfs.py read_journal: the same Journal on the VM, over a copy of flash.bin).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from host_tools.cli.common import EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail

# Runs on the board: the journal as the agent opens it, one line per record.
READER = """
import board, config
from binascii import hexlify
from hal import flash
from journal import Journal
b = board.load(config.load()["board"])
j = Journal(flash.mount(b) + "/j", b["journal"].get("capacity", 32768), prog=flash.progsize)
print("EPJ", j.acked, j.last_seq, j.depth())
for s, d in j.pending():
    print("EPR", s, hexlify(d).decode())
print("EPEND")
"""


def parse_export(text: str) -> tuple[dict, list[dict]]:
    """The reader's output: ({acked, last_seq, depth}, [{"seq", "raw"}]); a clear error otherwise."""
    head, recs, ended = None, [], False
    for line in text.splitlines():
        parts = line.strip().split()
        if parts[:1] == ["EPJ"] and len(parts) == 4:
            head = {"acked": int(parts[1]), "last_seq": int(parts[2]), "depth": int(parts[3])}
        elif parts[:1] == ["EPR"] and len(parts) == 3:
            recs.append({"seq": int(parts[1]), "raw": parts[2]})
        elif parts == ["EPEND"]:
            ended = True
    if head is None or not ended:
        fail(f"the board did not list its journal: {text.strip()[-300:] or 'no output'}")
    return head, recs


def register(cli: click.Group) -> None:
    @cli.group()
    def journal() -> None:
        """A board's money journal."""

    @journal.command()
    @click.option("--port", help="the board's serial port, e.g. /dev/ttyUSB0")
    @click.option("--board-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="instead: a stopped simulated board's directory (its flash.bin)")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                  help="write the JSON lines here [default: stdout]")
    @click.option("--reset/--no-reset", "reset_after", default=True, show_default=True,
                  help="soft-reset after reading so the agent starts again")
    @click.pass_obj
    def export(o: Ctx, port: str | None, board_dir: Path | None, out: Path | None, reset_after: bool) -> None:
        """Read the records a board still holds (not yet acknowledged) over its serial port, or from
        a stopped sim board's flash, as JSON lines {"seq", "raw"}: the JOURNAL of
        `edgepay ledger reconcile DEVICE JOURNAL --from-seq N`.

        \b
        edgepay journal export --port /dev/ttyUSB0 --out gate-001.jsonl
        edgepay journal export --board-dir sim-boards/gate-1 --out gate-1.jsonl
        edgepay ledger reconcile gate-001 gate-001.jsonl --from-seq 1
        """
        if (port is None) == (board_dir is None):
            fail("give one of --port (a board on its serial port) or --board-dir (a sim board)", EXIT_USAGE)
        if board_dir is not None:
            from host_tools.sim.flashfs import FlashImageError, read_journal
            try:
                head, recs = read_journal(board_dir)
            except FlashImageError as e:
                fail(str(e), EXIT_ERROR)
            _emit(o, str(board_dir), head, recs, out)
            return
        assert port is not None
        from mpremote.transport import TransportError, TransportExecError

        from host_tools.cli.flash import open_transport
        t = open_transport(port)
        try:
            try:
                t.enter_raw_repl(soft_reset=True)
            except TransportError as e:
                fail(f"no MicroPython raw REPL on {port}: {e}", EXIT_UNREACHABLE)
            try:
                text = t.exec(READER).decode("utf-8", "replace")
            except TransportExecError as e:
                err = (e.error_output or "").strip().splitlines()
                fail(f"the board could not open its journal: {err[-1] if err else e}", EXIT_ERROR)
            head, recs = parse_export(text)
            t.exit_raw_repl()
            if reset_after:
                t.serial.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reset, main.py starts
                time.sleep(0.1)
        except (TransportError, OSError) as e:
            fail(f"serial transfer from {port} failed: {e}", EXIT_UNREACHABLE)
        finally:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - a vanished port: nothing left to close
                pass
        _emit(o, port, head, recs, out)


def _emit(o: Ctx, source: str, head: dict, recs: list[dict], out: Path | None) -> None:
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
    summary = {"source": source, "records": len(recs), **head, "out": str(out) if out else None,
               "first_seq": recs[0]["seq"] if recs else None}
    span = f"seq {recs[0]['seq']}..{recs[-1]['seq']}" if recs else "none pending"
    if out is None:
        click.echo(lines, nl=False)  # stdout is the data; the summary goes to stderr
        o.note(f"exported {len(recs)} records ({span}; acknowledged through {head['acked']}) from {source}")
        return
    out.write_text(lines)
    o.emit(summary, lambda: o.console.print(
        f"[bold green]exported[/] {len(recs)} records ({span}; acknowledged through {head['acked']}) "
        f"from {source} to {out}"))
