"""`edgepay flash` and `edgepay logs`: a board over its serial port.

flash copies the board's bundle (`edgepay build`) and, with --config, the device's config.json (and
the ca.pem / device certificate it names, and board.json: the board file as checked now, whose
SHA-256 the config must carry, host_tools/boardcheck.py) with mpremote's own file protocol (raw REPL, raw-paste:
`mpremote fs cp` is the same code, mpremote.transport.Transport.fs_writefile), checks every file's
SHA-256 on the board, and soft-resets the board so the new firmware starts.
logs prints what the board writes to its console (the agent's log) as it comes.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import click

from host_tools.boardcheck import FILE as BOARD_FILE
from host_tools.boardcheck import device_board, device_bytes, stamp_of
from host_tools.cli.common import (EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail, is_sim_board,
                                   load_board, read_json_object)

CONFIG_EXTRAS = ("ca", "cert", "certkey")  # files a config names, copied beside it


def check_config(path: Path, board: dict) -> tuple[dict, list[Path]]:
    cfg = read_json_object(path, "config")
    for k in ("device", "kid", "key", "broker", "board"):
        if k not in cfg:
            fail(f"config {path} has no '{k}': make it with `edgepay provision`")
    key = cfg["key"]
    if not (isinstance(key, str) and re.fullmatch(r"[0-9a-fA-F]{64}", key)):
        fail(f"config {path}: the key is not 256 bits of hex (a damaged or wrong key file)")
    kind = cfg["board"].get("kind") if isinstance(cfg["board"], dict) else None
    if kind != board["kind"]:
        fail(f"config {path} is for a {kind} board; {board['name']} is a {board['kind']} board")
    cboard = device_board(path.parent, cfg) or {}
    if is_sim_board(cboard) and not is_sim_board(board):  # a sim config: simulated pins, a loopback broker
        fail(f"config {path} was provisioned for the sim board {cboard.get('name')!r}; {board['name']} "
             f"is a real board: provision the device for it (edgepay provision {cfg['device']} "
             f"--board {board['name']} --device-broker HOST:PORT)")
    # the board file goes beside the config, exactly as checked now; the config must carry its stamp
    want = stamp_of(device_bytes(board))
    have = cfg["board"].get("sha256")
    if have != want:
        fail(f"config {path} was provisioned for {'another version of ' if have else 'no checked '}board file "
             f"{board['name']} (its 'board' section has {'sha256 ' + str(have)[:16] + '...' if have else 'no sha256'}, "
             f"the board file now checks to {want[:16]}...): provision the device again "
             f"(edgepay provision {cfg['device']} --board {board['name']})")
    extras = []
    broker = cfg["broker"] if isinstance(cfg["broker"], dict) else {}
    for k in CONFIG_EXTRAS:
        name = broker.get(k)
        if isinstance(name, str):
            p = path.parent / name
            if not p.is_file():
                fail(f"config {path} names {k} file {name!r}, which is not beside it")
            extras.append(p)
    return cfg, extras


def _write_image(o: Ctx, board: dict, image: Path, port: str | None, drive: Path | None, baud: int) -> None:
    from host_tools.cli import firmware_image as fw
    mcu = board.get("mcu", "")
    if is_sim_board(board):
        fail(f"{board['name']} is a sim board: it runs on the unix VM, there is no image to write")
    if image.suffix.lower() == ".uf2":
        if mcu not in fw.UF2_FAMILY:
            fail(f"{image} is a UF2, and {board['name']} ({mcu}) is flashed with esptool: give its .bin")
        if drive is None:
            fail("a .uf2 --firmware needs --drive: the Pico's BOOTSEL drive (e.g. /media/$USER/RPI-RP2)", EXIT_USAGE)
        res = fw.write_uf2(image, mcu, drive)
        o.emit({"board": board["name"], "firmware": str(image), **res}, lambda: o.console.print(
            f"[bold green]wrote[/] {image.name} ({res['blocks']} UF2 blocks) to {drive}: the board reboots into it; "
            f"next: edgepay flash --board {board['name']} --port PORT --config ..."))
        return
    if mcu not in fw.ESP_CHIPS:
        fail(f"{board['name']} ({mcu}) takes a .uf2 image (--firmware X.uf2 --drive BOOTSEL), not {image.name}")
    if port is None:
        fail("--firmware for an ESP32 needs --port: the board's serial port, e.g. /dev/ttyUSB0", EXIT_USAGE)
    o.note(f"checking {image} (esptool image-info), then writing it to {port} at {hex(fw.ESP_CHIPS[mcu][2])}...")
    res = fw.write_esp(image, mcu, port, baud)
    o.emit({"board": board["name"], "firmware": str(image), **res}, lambda: o.console.print(
        f"[bold green]wrote[/] {image.name} to {port} ({res['chip']} at {hex(res['offset'])}); "
        f"next: edgepay flash --board {board['name']} --port {port} --config ..."))


def open_transport(port: str):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport
    try:
        return SerialTransport(port, baudrate=115200)
    except (TransportError, OSError, ValueError) as e:
        fail(f"cannot open serial port {port}: {e}", EXIT_UNREACHABLE)
    except Exception as e:  # noqa: BLE001 - serial.SerialException and friends
        fail(f"cannot open serial port {port}: {e}", EXIT_UNREACHABLE)


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--board", "board_name", required=True, help="a boards/*.json name or a path")
    @click.option("--port", help="the board's serial port, e.g. /dev/ttyUSB0 (required but for a UF2 --firmware)")
    @click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                  help="the device's config.json (edgepay provision)")
    @click.option("--firmware", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="write this MicroPython image first, then stop: an ESP32 .bin (esptool write-flash) "
                       "or a Pico .uf2 (onto --drive); run flash again without it for the bundle")
    @click.option("--drive", type=click.Path(file_okay=False, path_type=Path),
                  help="with a .uf2 --firmware: the Pico's BOOTSEL drive (the folder it mounts as RPI-RP2)")
    @click.option("--baud", type=int, default=460800, show_default=True, help="esptool's baud rate (--firmware)")
    @click.option("--bundle", type=click.Path(file_okay=False, path_type=Path),
                  help="a bundle made by `edgepay build` [default: build it now]")
    @click.option("--soft-reset/--no-soft-reset", default=True, show_default=True,
                  help="soft-reset before copying (stops a running agent cleanly)")
    @click.option("--reset/--no-reset", "reset_after", default=True, show_default=True,
                  help="soft-reset after copying so the new firmware starts")
    @click.pass_obj
    def flash(o: Ctx, board_name: str, port: str | None, config: Path | None, firmware: Path | None,
              drive: Path | None, baud: int, bundle: Path | None, soft_reset: bool, reset_after: bool) -> None:
        """Copy the firmware bundle (and the device config) to a board with mpremote; with
        --firmware, write a MicroPython image to it instead (esptool, or a UF2 to BOOTSEL)."""
        from mpremote.transport import TransportError
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
        board = load_board(board_name)
        if firmware is not None:
            _write_image(o, board, firmware, port, drive, baud)
            return
        if port is None:
            fail("--port is required: the board's serial port, e.g. /dev/ttyUSB0", EXIT_USAGE)
        files: list[tuple[Path | bytes, str]] = []
        if config is not None:
            if not config.is_file():
                fail(f"no config file {config}")
            cfg, extras = check_config(config, board)
        if bundle is None:
            from host_tools.build import BuildError
            from host_tools.bundle import build_bundle
            try:
                bundle = build_bundle(board, Path("build") / "boards" / board["name"]).out / "bundle"
            except (BuildError, FileNotFoundError, SyntaxError) as e:
                fail(f"build failed: {e}")
        elif (bundle / "bundle").is_dir():
            bundle = bundle / "bundle"
        mpys = sorted(bundle.rglob("*.mpy"))
        if not mpys:
            fail(f"{bundle} holds no .mpy files: run `edgepay build --board {board['name']}`")
        # the .mpy modules and the main.py entry point (a board runs main.py, never main.mpy)
        files += [(p, p.relative_to(bundle).as_posix()) for p in mpys + sorted(bundle.glob("main.py"))]
        if config is not None:
            files.append((device_bytes(board), BOARD_FILE))  # the bytes just checked: the config carries their SHA-256
            files.append((config, "config.json"))
            files += [(p, p.name) for p in extras]
        total = sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p, _ in files)
        t = open_transport(port)
        done: list[dict] = []
        try:
            try:
                t.enter_raw_repl(soft_reset=soft_reset)
            except TransportError as e:
                fail(f"no MicroPython raw REPL on {port}: {e}", EXIT_UNREACHABLE)
            dirs = sorted({str(Path(r).parent) for _, r in files if "/" in r}, key=len)
            for d in dirs:
                if not t.fs_isdir(d):
                    t.fs_mkdir(d)
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=o.err, disable=o.json, transient=False) as prog:
                task = prog.add_task(f"flash {board['name']}", total=total)
                base = 0
                for local, remote in files:
                    data = local if isinstance(local, bytes) else local.read_bytes()
                    prog.update(task, description=f"{remote:<24}")
                    t.fs_writefile(remote, data,
                                   progress_callback=lambda n, _s, b=base: prog.update(task, completed=b + n))
                    base += len(data)
                    prog.update(task, completed=base)
                    import hashlib
                    if t.fs_hashfile(remote, "sha256") != hashlib.sha256(data).digest():
                        fail(f"{remote}: the board's copy differs from {'the checked board file' if isinstance(local, bytes) else local} (SHA-256)", EXIT_ERROR)
                    done.append({"file": remote, "bytes": len(data)})
                prog.update(task, description=f"flashed {board['name']}")
            t.exit_raw_repl()
            if reset_after:
                t.serial.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reset, main.py starts
                time.sleep(0.1)
        except TransportError as e:
            fail(f"serial transfer to {port} failed: {e}", EXIT_UNREACHABLE)
        except OSError as e:
            fail(f"serial transfer to {port} failed: {e}", EXIT_UNREACHABLE)
        finally:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - a vanished pty/USB port: nothing left to close
                pass
        result = {"board": board["name"], "port": port, "files": done, "bytes": total,
                  "config": str(config) if config else None, "verified": "sha256", "reset": reset_after}
        o.emit(result, lambda: o.console.print(
            f"[bold green]flashed[/] {len(done)} files, {total:,} bytes to {port} (SHA-256 verified)"
            + (f", config for {cfg['device']}" if config is not None else "")))

    @cli.command()
    @click.option("--port", required=True, help="the board's serial port")
    @click.option("--baud", type=int, default=115200, show_default=True)
    @click.option("--reset", is_flag=True, help="soft-reset first, to follow the log from boot")
    @click.option("--lines", type=click.IntRange(min=1), help="stop after this many lines")
    @click.option("--timeout", type=click.FloatRange(min=0.1), help="stop after this many seconds")
    @click.option("--until", "until", help="stop at the first line matching this regex (exit 1 if none came)")
    @click.pass_obj
    def logs(o: Ctx, port: str, baud: int, reset: bool, lines: int | None, timeout: float | None,
             until: str | None) -> None:
        """Follow a board's console log (Ctrl-C to stop)."""
        import serial
        try:
            rx = re.compile(until) if until else None
        except re.error as e:
            fail(f"bad --until regex: {e}")
        try:
            s = serial.serial_for_url(port, baudrate=baud, timeout=0.2)
        except (serial.SerialException, OSError, ValueError) as e:
            fail(f"cannot open serial port {port}: {e}", EXIT_UNREACHABLE)
        n = 0
        found = False
        deadline = time.monotonic() + timeout if timeout else None
        buf = b""
        try:
            if reset:
                _to_prompt(s, port)
                s.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reset (boot.py, main.py)
            while lines is None or n < lines:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                chunk = s.read(256)
                if not chunk:
                    continue
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    n += 1
                    if o.json:
                        o.jsonline({"ts": round(time.time(), 3), "line": line})
                    else:
                        click.echo(line)
                    if rx is not None and rx.search(line):
                        found = True
                        break
                    if lines is not None and n >= lines:
                        break
                if found:
                    break
        except KeyboardInterrupt:
            pass
        except (serial.SerialException, OSError) as e:
            fail(f"serial port {port}: {e}", EXIT_UNREACHABLE)
        finally:
            s.close()
        if rx is not None and not found:
            fail(f"no log line matched {until!r}")


def _to_prompt(s, port: str, timeout: float = 15.0) -> None:
    """Interrupt whatever runs (Ctrl-C) until the friendly REPL prompt shows: an agent shutting
    down cleanly takes a few seconds, and a Ctrl-D sent before the prompt would be lost."""
    seen = b""
    deadline = time.monotonic() + timeout
    next_int = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_int:
            s.write(b"\r\x03")
            next_int = time.monotonic() + 1.0
        seen = (seen + s.read(256))[-64:]
        if seen.endswith(b">>> "):
            return
    fail(f"no MicroPython prompt on {port} (is it a MicroPython board?)", EXIT_UNREACHABLE)
