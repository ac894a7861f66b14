"""Broker-side provisioning files, shared by `edgepay provision` (cli/provision.py) and the
simulator's external broker (sim/world.py): the passwd line and ACL patterns for a device, and
owner-only directories and files for everything that holds a secret."""
from __future__ import annotations

import os
from pathlib import Path

from host_tools.broker import password_line

DEVICE_ACL = ["pattern write v1/dev/%u/up/#", "pattern read v1/dev/%u/dn/#"]
MAX_BROKERS = 4  # firmware/config.py MAX_BROKERS: broker addresses a device tries in turn


def broker_section(addrs: list[tuple[str, int]], password: str) -> dict:
    """config.json's "broker" for these addresses: one is {"host", "port"}, as ever; more are
    {"brokers": [[host, port], ...]}, which the device tries in turn (firmware/mqtt_client.py)."""
    if not 1 <= len(addrs) <= MAX_BROKERS:
        raise ValueError(f"a device takes 1..{MAX_BROKERS} broker addresses, not {len(addrs)}")
    if len(addrs) == 1:
        return {"host": addrs[0][0], "port": addrs[0][1], "password": password}
    return {"brokers": [[h, p] for h, p in addrs], "password": password}


GITIGNORE = "# made by edgepay: device keys, broker passwords, registry; never commit them\n*\n"


def make_private_dir(path: Path) -> Path:
    """Create `path` (and parents) owner-only (0700); an existing one is tightened. The topmost
    directory made here gets a .gitignore of "*": keys written inside a checkout (the default
    ./edgepay/ is wherever the user stands) stay out of git."""
    path = Path(path)
    if str(path) in ("", "."):
        return path
    missing = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in [path, *missing]:  # every directory made here, and the leaf, owner-only
        os.chmod(p, 0o700)
    top = missing[-1] if missing else None
    for d in (top, Path("edgepay") if path.parts[:1] == ("edgepay",) else None):  # and the default root
        if d is not None and d.is_dir() and not (d / ".gitignore").exists():
            (d / ".gitignore").write_text(GITIGNORE)
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    """Write a secret-bearing file created 0600 from the start (never world-readable, even briefly)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)
    return path


def update_passwd(path: Path, user: str, password: str) -> None:
    lines = []
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines(keepends=True)
                 if ln.strip() and ln.split(":", 1)[0] != user]
    lines.append(password_line(user, password))
    write_private(path, "".join(lines))


def update_passwd_many(path: Path, users: dict[str, str]) -> None:
    """update_passwd for many users with one read and one write (a fleet of thousands)."""
    lines = []
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines(keepends=True)
                 if ln.strip() and ln.split(":", 1)[0] not in users]
    lines += [password_line(u, p) for u, p in users.items()]
    write_private(path, "".join(lines))


def remove_passwd(path: Path, user: str) -> bool:
    """Drop `user`'s line from the broker's passwd (a revoked device); True if it was there."""
    if not path.exists():
        return False
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if ln.strip() and ln.split(":", 1)[0] != user]
    write_private(path, "".join(keep))
    return len(keep) != len([ln for ln in lines if ln.strip()])


def ensure_acl(path: Path) -> None:
    """The device patterns once; cloud users' entries (if an operator added them) are kept."""
    text = path.read_text() if path.exists() else ""
    have = {ln.strip() for ln in text.splitlines()}
    missing = [ln for ln in DEVICE_ACL if ln not in have]
    if missing:
        head = "# edgepay ACL (protocol/SPEC.md section 1): a device may write its up/ and read its dn/ topics\n"
        body = ("\n".join(missing) + "\n")
        text = (head + body + ("\n" + text if text else "")) if not text.startswith("# edgepay") else text + body
    write_private(path, text)
