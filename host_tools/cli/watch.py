"""`edgepay watch [DEVICE]`: the live stream of device messages, each verified (MAC with the
device's key from the registry, topic bound) and decoded with the host codec. What does not verify
is shown as UNVERIFIED with its SPEC section 7 error and never decoded further."""
from __future__ import annotations

import json
import queue
import time
from typing import Any

import click

from host_tools.cli.common import EXIT_UNREACHABLE, Ctx, fail, jsonable
from host_tools.cloud.registry import open_uplink


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("device", required=False)
    @click.option("--down", is_flag=True, help="also the cloud's messages to the devices (dn/...)")
    @click.option("--count", type=click.IntRange(min=1), help="stop after this many messages")
    @click.option("--duration", type=click.FloatRange(min=0.1), help="stop after this many seconds")
    @click.pass_obj
    def watch(o: Ctx, device: str | None, down: bool, count: int | None, duration: float | None) -> None:
        """Follow DEVICE's messages (every device without one), verified and decoded.

        With --json: one JSON object per line {ts, topic, device, retain, verified, msg | error}.
        """
        from rich.markup import escape

        from host_tools.cloud.mqtt import BrokerUnreachable, CloudMQTT
        from host_tools.protocol import is_device_id
        if device is not None and not is_device_id(device):
            fail(f"bad device id {device!r}")
        host, port = o.broker_addr()
        password = o.need_password()
        reg = o.open_registry()
        if device is not None:
            o.device(reg, device)
        q: queue.Queue = queue.Queue()
        mq = CloudMQTT(o.broker_settings(host, port, password),
                       sink=lambda t, p, r: q.put((t, bytes(p), bool(r))))
        dev = device or "+"
        mq.subscribe(f"v1/dev/{dev}/up/#", qos=1)
        if down:
            mq.subscribe(f"v1/dev/{dev}/dn/#", qos=1)
        try:
            mq.connect(timeout=5)
        except BrokerUnreachable as e:
            reg.close()
            fail(str(e), EXIT_UNREACHABLE)
        # on stderr with --json too: the line says the subscriptions are granted (nothing sent from
        # now on is missed), which a script that starts a watch and then acts waits for
        o.note(f"watching v1/dev/{dev}/{'#' if down else 'up/#'} on {host}:{port} (Ctrl-C to stop)")
        cache: dict = {}
        n = 0
        deadline = time.monotonic() + duration if duration else None
        try:
            while count is None or n < count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    topic, payload, retain = q.get(timeout=min(left, 0.5) if left is not None else 0.5)
                except queue.Empty:
                    continue
                n += 1
                d, msg, err = open_uplink(reg, cache, topic, payload)
                rec: dict[str, Any] = {"ts": round(time.time(), 3), "topic": topic, "device": d,
                                       "retain": retain, "verified": err is None}
                if err is None:
                    rec["msg"] = msg
                else:
                    rec["error"] = err
                if o.json:
                    o.jsonline(rec)
                    continue
                stamp = time.strftime("%H:%M:%S", time.localtime(rec["ts"]))
                suffix = "/".join(topic.split("/")[3:])
                if err is not None:
                    o.console.print(f"{stamp} [bold red]UNVERIFIED[/] {escape(d)} {escape(suffix)} "
                                    f"[red]{err}[/] ({len(payload)} B)")
                    continue
                assert msg is not None
                fields = {k: v for k, v in msg.items() if k != "type"}
                body = json.dumps(fields, sort_keys=True, default=jsonable, separators=(", ", ": "))
                o.console.print(f"{stamp} [green]✓[/] [bold]{escape(d)}[/] {escape(suffix)} "
                                f"[cyan]{msg.get('type')}[/]{' (retained)' if retain else ''} {escape(body)}")
        except KeyboardInterrupt:
            pass
        finally:
            mq.close()
            reg.close()
