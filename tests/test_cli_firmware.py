"""`edgepay flash --firmware IMAGE` as far as this machine allows: an ESP32 image built here (with
esptool's own image classes) and checked by `esptool image-info` before write-flash is attempted
(no board: the serial port is refused, exit 3); a UF2 built here written to a folder standing in
for a Pico's BOOTSEL drive. Every refusal path: a bad image, the wrong chip, the wrong format for
the board, no drive, a folder that is not a BOOTSEL drive."""
from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import cli

HAS_ESPTOOL = importlib.util.find_spec("esptool") is not None
needs_esptool = pytest.mark.skipif(not HAS_ESPTOOL, reason="esptool not installed (the dev extra pins it)")


def invoke(*args: str):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output, r.output
    return r


def esp_image(path: Path, chip: str = "esp32") -> Path:
    from esptool import bin_image
    cls = {"esp32": bin_image.ESP32FirmwareImage, "esp32s3": bin_image.ESP32S3FirmwareImage}[chip]
    img = cls()
    img.entrypoint = 0x40080000
    segs = [bin_image.ImageSegment(0x3FFB0000, b"\x01" * 64), bin_image.ImageSegment(0x40080000, b"\x02" * 128)]
    for s, name in zip(segs, (".dram0.data", ".iram0.text")):
        s.name = name
    img.segments = segs
    img.append_digest = True
    img.save(str(path))
    return path


def uf2(path: Path, nblocks: int = 3, family: int = 0xE48BFF56) -> Path:
    out = b""
    for i in range(nblocks):
        payload = bytes([i]) * 256
        b = struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000 + 256 * i, 256, i, nblocks, family)
        b += payload + b"\0" * (476 - len(payload)) + struct.pack("<I", 0x0AB16F30)
        assert len(b) == 512
        out += b
    path.write_bytes(out)
    return path


@needs_esptool
def test_esp32_image_checked_by_esptool_then_written(tmp_path):
    img = esp_image(tmp_path / "ESP32_GENERIC.bin")
    p = subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "image-info", str(img)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Checksum" in p.stdout and "(valid)" in p.stdout, p.stdout + p.stderr
    # no board on this machine: the image passes its check, then the port is refused (exit 3)
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--firmware", str(img), "--port", str(tmp_path / "no-tty"))
    assert r.exit_code == 3, r.output
    assert "image-info" in r.stderr and "0x1000" in r.stderr and "write-flash" in r.stderr, r.stderr


@needs_esptool
def test_esp32_image_refusals(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01" * 100)
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--firmware", str(junk), "--port", "/dev/null")
    assert r.exit_code == 1 and "not an ESP firmware image" in r.stderr, r.stderr
    s3 = esp_image(tmp_path / "s3.bin", "esp32s3")
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--firmware", str(s3), "--port", "/dev/null")
    assert r.exit_code == 1 and "image for ESP32-S3" in r.stderr, r.stderr
    r = invoke("flash", "--board", "esp32-s3-rental", "--firmware", str(s3), "--port", str(tmp_path / "no-tty"))
    assert r.exit_code == 3 and "0x0" in r.stderr, r.stderr  # right chip: on to the (missing) port
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--firmware", str(esp_image(tmp_path / "e.bin")))
    assert r.exit_code == 2 and "--port" in r.stderr


def test_uf2_written_to_the_bootsel_drive(tmp_path):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    img = uf2(tmp_path / "RPI_PICO_W.uf2")
    r = invoke("--json", "flash", "--board", "pico-w-vending", "--firmware", str(img), "--drive", str(drive))
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["blocks"] == 3 and (drive / "RPI_PICO_W.uf2").read_bytes() == img.read_bytes()


def test_uf2_refusals(tmp_path):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    img = uf2(tmp_path / "fw.uf2")
    r = invoke("flash", "--board", "pico-w-vending", "--firmware", str(img), "--drive", str(drive))
    assert r.exit_code == 1 and "not a BOOTSEL drive" in r.stderr  # no INFO_UF2.TXT
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader\n")
    r = invoke("flash", "--board", "pico-w-vending", "--firmware", str(img), "--drive", str(tmp_path / "none"))
    assert r.exit_code == 3 and "no BOOTSEL drive" in r.stderr
    r = invoke("flash", "--board", "pico-w-vending", "--firmware", str(img))
    assert r.exit_code == 2 and "--drive" in r.stderr
    bad = tmp_path / "bad.uf2"
    bad.write_bytes(img.read_bytes()[:700])
    r = invoke("flash", "--board", "pico-w-vending", "--firmware", str(bad), "--drive", str(drive))
    assert r.exit_code == 1 and "not a UF2 file" in r.stderr
    esp_family = uf2(tmp_path / "esp.uf2", family=0x1C5F21B0)
    r = invoke("flash", "--board", "pico-w-vending", "--firmware", str(esp_family), "--drive", str(drive))
    assert r.exit_code == 1 and "not rp2040" in r.stderr
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--firmware", str(img), "--port", "/dev/null")
    assert r.exit_code == 1 and "esptool" in r.stderr  # a UF2 for an ESP32 board
    r = invoke("flash", "--board", "sim-gate", "--firmware", str(img), "--drive", str(drive))
    assert r.exit_code == 1 and "sim board" in r.stderr
    assert [p.name for p in drive.iterdir()] == ["INFO_UF2.TXT"]  # nothing written by any refusal
