"""Run a private PostgreSQL cluster for tests and benches (like host_tools/broker.py for Mosquitto).

    pg = PgServer(); pg.start()
    url = pg.new_database()          # a fresh, empty database: "host=<socket dir> port=... dbname=..."
    ...; pg.stop()                   # or: with PgServer() as pg: ...

initdb into a temporary directory, then pg_ctl start on a free port, listening only on a unix
socket inside that directory (no TCP). PostgreSQL refuses to run as root: as root the cluster runs
as the `postgres` user (runuser, else su) and the directory is handed to it. Binaries are looked up
in $EDGEPAY_PG_BIN, then /usr/lib/postgresql/<newest>/bin, then PATH.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from host_tools.broker import free_port

__all__ = ["PgServer", "PgUnavailable", "pg_bin_dir"]


class PgUnavailable(RuntimeError):
    pass


def pg_bin_dir() -> Path:
    env = os.environ.get("EDGEPAY_PG_BIN")
    if env and (Path(env) / "initdb").exists():
        return Path(env)

    def version(p: str) -> tuple:
        v = Path(p).parent.parent.name
        return tuple(int(x) for x in v.split(".") if x.isdigit())
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    if exe and shutil.which("pg_ctl"):
        return Path(exe).parent
    raise PgUnavailable("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or PATH): "
                        "run `make setup` (apt-get install postgresql) or set EDGEPAY_PG_BIN")


class PgServer:
    def __init__(self, port: int | None = None, workdir: str | None = None, fast: bool = True,
                 superuser: str = "postgres"):
        """fast: fsync and synchronous_commit off (tests: durability is not what they check)."""
        self.bin = pg_bin_dir()
        self.port = port or free_port()
        self.fast = fast
        self.superuser = superuser
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edgepay-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.logfile = self.dir / "postgres.log"
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` user to run the cluster as") from None
            self._run_as = "postgres"
        self.started = False

    # ---- helpers ------------------------------------------------------------------------
    def _cmd(self, argv: list[str]) -> list[str]:
        if self._run_as is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", self._run_as, "--", *argv]
        return ["su", self._run_as, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in argv)]

    def _run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(self._cmd(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, cwd=str(self.dir))
        return p

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def conninfo(self) -> str:
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"host={self.sock} port={self.port} user={self.superuser} dbname={dbname}"

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "PgServer":
        if self.started:
            return self
        self.sock.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chmod(self.dir, 0o755)  # mkdtemp makes it 0700: the postgres user must enter it
            for d in (self.dir, self.sock):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            init = self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.superuser,
                           "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                          timeout=timeout)
            if init.returncode:
                raise PgUnavailable(f"initdb failed ({init.returncode}): {init.stdout.decode(errors='replace')}")
        opts = [f"-p {self.port}", f"-k {self.sock}", "-c listen_addresses=''", "-c max_connections=100"]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for attempt in range(3):
            p = self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                           "-t", str(int(timeout)), "-o", " ".join(opts), "start"], timeout=timeout + 10)
            if p.returncode == 0:
                self.started = True
                return self
            if "could not bind" in self.log() or "in use" in self.log():
                self.port = free_port()
                opts[0] = f"-p {self.port}"
                continue
            break
        raise PgUnavailable(f"pg_ctl start failed ({p.returncode}): {p.stdout.decode(errors='replace')}\n{self.log()[-2000:]}")

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database; its conninfo."""
        import psycopg
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # pyright: ignore[reportCallIssue, reportArgumentType] - DDL takes no parameters; the name is ours (uuid)
        return self.url(name)

    def stop(self, timeout: float = 30.0) -> None:
        if self.started:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)),
                       "stop"], timeout=timeout + 10)
            self.started = False

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)
