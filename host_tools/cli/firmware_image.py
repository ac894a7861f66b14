"""`edgepay flash --firmware IMAGE`: a MicroPython image onto a board, before the bundle.

ESP32 / ESP32-S3: esptool (pinned in constraints.txt; the `tools` extra). The image is checked
first with `esptool image-info` (a valid ESP image, for the board's chip), then written with
`write-flash` at the offset MicroPython's own instructions give (ESP32 0x1000, the others 0x0).
RP2040: a UF2, checked block by block (magics, the RP2040 family id), copied onto the BOOTSEL
drive (`--drive`, the folder the board mounts as RPI-RP2, which holds INFO_UF2.TXT).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from host_tools.cli.common import EXIT_UNREACHABLE, fail

# mcu -> (esptool --chip, the chip name image-info reports, the image's flash offset)
ESP_CHIPS = {"esp32": ("esp32", "ESP32", 0x1000), "esp32s3": ("esp32s3", "ESP32-S3", 0x0),
             "esp32c3": ("esp32c3", "ESP32-C3", 0x0), "esp32s2": ("esp32s2", "ESP32-S2", 0x1000)}
UF2_MAGIC0, UF2_MAGIC1, UF2_MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
UF2_FAMILY = {"rp2040": 0xE48BFF56}
UF2_FLAG_FAMILY = 0x2000


def esptool_argv() -> list[str]:
    if importlib.util.find_spec("esptool") is None:
        fail("esptool is not installed: pip install -c constraints.txt -e '.[tools]' (or make setup)")
    return [sys.executable, "-m", "esptool"]


def check_esp_image(image: Path, mcu: str) -> dict:
    """`esptool image-info`: a valid image for this chip, or a clear error."""
    chip, name, offset = ESP_CHIPS[mcu]
    p = subprocess.run([*esptool_argv(), "--chip", chip, "image-info", str(image)], capture_output=True,
                       text=True, timeout=60)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        why = [ln for ln in out.splitlines() if "error" in ln.lower()] or out.strip().splitlines()[-1:]
        fail(f"{image} is not an ESP firmware image: {why[0].strip() if why else 'esptool image-info failed'}")
    m = re.search(r"Chip ID: \d+ \(([^)]+)\)", out)
    if m and m.group(1) != name:
        fail(f"{image} is an image for {m.group(1)}, and this board's chip is {name} (board mcu {mcu!r})")
    if "(invalid)" in out:
        fail(f"{image}: esptool image-info reports an invalid checksum or hash")
    return {"chip": chip, "offset": offset, "image_chip": m.group(1) if m else None}


def write_esp(image: Path, mcu: str, port: str, baud: int) -> dict:
    info = check_esp_image(image, mcu)
    argv = [*esptool_argv(), "--chip", info["chip"], "--port", port, "--baud", str(baud),
            "write-flash", "-z", hex(info["offset"]), str(image)]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip().splitlines()
        why = next((ln for ln in reversed(out) if "error" in ln.lower()), out[-1] if out else "esptool failed")
        unreachable = "port" in why.lower() or "connect" in why.lower()
        fail(f"esptool write-flash to {port} failed: {why.strip()}", EXIT_UNREACHABLE if unreachable else 1)
    return {**info, "port": port, "command": " ".join(argv[2:])}


def check_uf2(image: Path, mcu: str) -> int:
    """The number of blocks of a UF2 for this chip family; a clear error otherwise."""
    data = image.read_bytes()
    if not data or len(data) % 512:
        fail(f"{image} is not a UF2 file: its size ({len(data)} B) is not a multiple of 512-byte blocks")
    family = UF2_FAMILY.get(mcu)
    n = len(data) // 512
    for i in range(n):
        b = data[i * 512:(i + 1) * 512]
        m0, m1, flags, _addr, _size, blockno, nblocks, fam = struct.unpack_from("<8I", b)
        (end,) = struct.unpack_from("<I", b, 508)
        if (m0, m1, end) != (UF2_MAGIC0, UF2_MAGIC1, UF2_MAGIC_END):
            fail(f"{image} is not a UF2 file: block {i} has the wrong magic numbers")
        if blockno != i or nblocks != n:
            fail(f"{image}: block {i} says it is {blockno} of {nblocks} (a truncated or joined file)")
        if family is not None and flags & UF2_FLAG_FAMILY and fam != family:
            fail(f"{image} is a UF2 for family 0x{fam:08x}, not {mcu} (0x{family:08x})")
    return n


def write_uf2(image: Path, mcu: str, drive: Path) -> dict:
    blocks = check_uf2(image, mcu)
    if not drive.is_dir():
        fail(f"no BOOTSEL drive at {drive}: hold BOOTSEL while plugging the board in, then give the folder "
             "it mounts as (e.g. /media/$USER/RPI-RP2)", EXIT_UNREACHABLE)
    if not (drive / "INFO_UF2.TXT").is_file():
        fail(f"{drive} is not a BOOTSEL drive (no INFO_UF2.TXT)")
    dest = drive / image.name
    with open(image, "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())  # the board reboots once the last block lands
    return {"drive": str(drive), "file": str(dest), "blocks": blocks}
