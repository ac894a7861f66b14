"""`edgepay build --board B`: the board's firmware bundle (.mpy), manifest.py and package.json."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from host_tools.cli.common import Ctx, fail, load_board

SIZE_GOAL = 64 * 1024  # bench/firmware_size.py GOAL


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--board", "board_name", required=True, help="a boards/*.json name or a path")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                  help="output directory [default: build/boards/BOARD]")
    @click.pass_obj
    def build(o: Ctx, board_name: str, out: Path | None) -> None:
        """Compile the firmware a board needs with mpy-cross; print its size report.

        \b
        OUT/bundle/      the .mpy files to copy to the board (edgepay flash)
        OUT/src/         the same modules as source
        OUT/manifest.py  freeze them into a MicroPython build (FROZEN_MANIFEST=...)
        OUT/package.json install them with mip
        OUT/board.json   the board file, checked in full: it goes on the board beside config.json,
                         whose "board" section holds its SHA-256 (edgepay provision), checked at boot
        """
        from host_tools.boardcheck import FILE, BoardError, stamp_of
        from host_tools.build import BuildError
        from host_tools.bundle import build_bundle
        board = load_board(board_name)
        out = Path(out) if out is not None else Path("build") / "boards" / board["name"]
        try:
            b = build_bundle(board, out)
        except (BuildError, BoardError, FileNotFoundError, SyntaxError) as e:
            fail(f"build failed: {e}")
        board_sha = stamp_of((out / FILE).read_bytes())
        result = {"board": board["name"], "kind": board["kind"], "out": str(out),
                  "board_file": str(out / FILE), "board_sha256": board_sha,
                  "manifest": str(out / "manifest.py"), "package": str(out / "package.json"),
                  "modules": b.sizes, "mpy_bytes": b.total}

        def human() -> None:
            t = Table(title=f"{board['name']} ({board['kind']}{', simulated' if board.get('sim') else ''})")
            t.add_column("module")
            t.add_column(".mpy bytes", justify="right")
            for name, size in b.sizes.items():
                t.add_row(name, f"{size:,}")
            style = "bold green" if b.total <= SIZE_GOAL else "bold red"
            t.add_row(f"[bold]total ({len(b.sizes)} modules)", f"[{style}]{b.total:,}")
            o.console.print(t)
            o.console.print(f"bundle {out / 'bundle'}  manifest {out / 'manifest.py'}  mip {out / 'package.json'}")
            o.console.print(f"board file {out / FILE} (checked; sha256 {board_sha})")
        o.emit(result, human)
