"""`edgepay serve [--config FILE] [--only PART ...]`: the cloud side as one service (host_tools/
service/): ingest, the session service (opt-in), the time responder, the firmware chunk server, the campaign runner and the HTTP API (/v1, /healthz,
/readyz, /metrics). Runs until SIGINT/SIGTERM; prints `ready URL` on stdout once every part is up."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from host_tools.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                  help="the TOML config (host_tools/service/config.py); the environment overrides it")
    @click.option("--only", multiple=True, type=click.Choice(["ingest", "time", "chunks", "campaigns", "api", "sessions"]),
                  help="run only these parts (repeat): scale each out on its own")
    @click.option("--dev", is_flag=True,
                  help="development: its own Mosquitto, SQLite under --dir, an admin account, the session "
                       "service on the scripted provider (no money moves), plain HTTP")
    @click.option("--dir", "dev_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("edgepay-dev"),
                  show_default=True, help="with --dev: where its databases and broker files live")
    @click.pass_obj
    def serve(o: Ctx, config_file: Path | None, only: tuple[str, ...], dev: bool, dev_dir: Path) -> None:
        """Run the cloud side: ingest, sessions, time, firmware chunks, campaigns and the HTTP API."""
        from host_tools.cloud.mqtt import BrokerUnreachable, BrokerUnsupported
        from host_tools.service.config import ConfigError, load
        from host_tools.service.run import Service
        broker = None
        try:
            cfg = load(config_file)
            if dev:
                from host_tools.cli.serve_dev import dev_setup
                cfg, broker = dev_setup(cfg, dev_dir)
            svc = Service(cfg, only=only or None)
        except ConfigError as e:
            if broker is not None:
                broker.stop()
            fail(str(e), EXIT_USAGE)
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        try:
            try:
                svc.start()
            except (BrokerUnreachable, OSError) as e:
                svc.stop()
                fail(f"cannot start: {e}", EXIT_UNREACHABLE)
            except (BrokerUnsupported, ConfigError, RuntimeError) as e:
                svc.stop()
                fail(f"cannot start: {e}")
            click.echo(f"ready {svc.url or ''} ({', '.join(sorted(svc.parts))})".replace("ready  ", "ready "))
            try:
                stop.wait()
            finally:
                svc.stop()
        finally:
            if broker is not None:
                broker.stop()
