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
    @click.pass_obj
    def serve(o: Ctx, config_file: Path | None, only: tuple[str, ...]) -> None:
        """Run the cloud side: ingest, time, firmware chunks, campaigns and the HTTP API."""
        from host_tools.cloud.mqtt import BrokerUnreachable, BrokerUnsupported
        from host_tools.service.config import ConfigError, load
        from host_tools.service.run import Service
        try:
            svc = Service(load(config_file), only=only or None)
        except ConfigError as e:
            fail(str(e), EXIT_USAGE)
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
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
