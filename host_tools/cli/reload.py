"""After `provision` adds a device to the broker's passwd, Mosquitto refuses it (CONNACK 5, not
authorised) until it rereads its files on SIGHUP. A broker this tool manages is reloaded here: the
one whose pid is in BROKER_DIR/mosquitto.pid (`edgepay broker conf` writes that pid_file line), or
a Mosquitto started with BROKER_DIR/mosquitto.conf (host_tools.broker.Broker, `edgepay demo`).
Another Mosquitto whose configuration names BROKER_DIR (or cannot be read) is not ours to signal:
the exact command to reload it is printed. One configured elsewhere is left alone, unmentioned."""
from __future__ import annotations

import os
import signal
from pathlib import Path

PID_FILE = "mosquitto.pid"


def _is_mosquitto(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _mosquittos() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and _is_mosquitto(int(p.name)):
            out.append(int(p.name))
    return sorted(out)


def _conf_of(pid: int) -> Path | None:
    args = _cmdline(pid)
    for i, a in enumerate(args[:-1]):
        if a in ("-c", "--config-file"):
            try:
                return Path(args[i + 1]).resolve()
            except OSError:
                return None
    return None


def reload_broker(broker_dir: Path) -> dict:
    """{"reloaded": pid} when our broker got SIGHUP; {"reload": command, "pids": [...]} when some
    other Mosquitto runs that may read these files; {} when none runs (it reads them at start)."""
    d = Path(broker_dir).resolve()
    ours: list[int] = []
    pid_file = d / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        if _is_mosquitto(pid):
            ours.append(pid)
    except (OSError, ValueError):
        pass
    others = []
    for pid in _mosquittos():
        if pid in ours:
            continue
        conf = _conf_of(pid)
        if conf is not None and conf.parent == d:
            ours.append(pid)
        elif _may_read(conf, d):
            others.append(pid)
    for pid in ours:
        try:
            os.kill(pid, signal.SIGHUP)
            return {"reloaded": pid}
        except OSError:  # not ours to signal after all (another user): say how
            others.insert(0, pid)
    if not others:
        return {}
    cmd = " ; ".join(f"kill -HUP {p}" for p in others)
    if any(_under_systemd(p) for p in others):
        cmd = "systemctl reload mosquitto"
    return {"reload": cmd, "pids": others}


def _may_read(conf: Path | None, d: Path) -> bool:
    """Does a Mosquitto run with `conf` read files in `d`? No config: it reads no passwd file. An
    unreadable config: it may (say so rather than stay silent)."""
    if conf is None:
        return False
    try:
        texts = [conf.read_text(errors="replace")]
        for line in texts[0].splitlines():  # include_dir: its *.conf files are part of it
            if line.strip().startswith("include_dir"):
                inc = Path(line.split(None, 1)[1].strip())
                texts += [f.read_text(errors="replace") for f in sorted(inc.glob("*.conf"))]
    except (OSError, IndexError):
        return True
    return any(str(d) in t for t in texts)


def _under_systemd(pid: int) -> bool:
    try:
        return "mosquitto.service" in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
