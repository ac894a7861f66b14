"""`edgepay cmd DEVICE NAME [KEY=VALUE...]` and `edgepay time [DEVICE]`: signed commands, and the
time responder (a device asks the time with a nonce; SPEC §5), through CommandClient.

ARGS are key=value. A key is an integer (`1=3`, the SPEC's small integer keys) or a name
(`hb_s=10`, set_config's text keys). A value is an integer, true/false, null, a JSON list or
object (`8='[["cola",250]]'`), a "quoted string", or else the text as written.

Exit codes by outcome: SUCCEEDED 0, FAILED 10, REJECTED 11, TIMED_OUT 12, EXPIRED 13.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any

import click

from host_tools.cloud import cmdspec
from host_tools.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail

OUTCOME_EXIT = {"SUCCEEDED": 0, "FAILED": 10, "REJECTED": 11, "TIMED_OUT": 12, "EXPIRED": 13}
_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


def parse_value(text: str) -> Any:
    if _INT.fullmatch(text):
        return int(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    if text[:1] in "[{\"":
        try:
            v = json.loads(text)
        except ValueError:
            fail(f"bad value {text!r}: it starts like JSON but is not valid JSON", EXIT_USAGE)
        if isinstance(v, float) or _has_float(v):
            fail(f"bad value {text!r}: no floats on the wire (money is integer minor units)", EXIT_USAGE)
        return v
    if re.fullmatch(r"-?[0-9]+\.[0-9]*([eE][-+]?[0-9]+)?", text):
        fail(f"bad value {text!r}: no floats on the wire (money is integer minor units)", EXIT_USAGE)
    return text


def _has_float(v: Any) -> bool:
    if isinstance(v, float):
        return True
    if isinstance(v, list):
        return any(_has_float(x) for x in v)
    if isinstance(v, dict):
        return any(_has_float(x) for x in v.values())
    return False


def parse_args(items: tuple[str, ...]) -> dict | None:
    out: dict[Any, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"bad argument {item!r}: use key=value (key an integer or a name), e.g. 1=2 or hb_s=10", EXIT_USAGE)
        if _INT.fullmatch(key) and not key.startswith("-"):
            k: Any = int(key)
        elif _NAME.fullmatch(key):
            k = key
        else:
            fail(f"bad argument key {key!r}: an unsigned integer or a name [A-Za-z_][A-Za-z0-9_]*", EXIT_USAGE)
        if k in out:
            fail(f"argument key {key!r} given twice", EXIT_USAGE)
        out[k] = parse_value(value)
    return out or None


def connect(o: Ctx, status_of: str | None = None, device: str | None = None):
    """(registry, a connected CommandClient) on one registry connection; with `device`, that device
    must be registered (an error before any broker connection); with `status_of`, the client also
    follows that device's retained status."""
    from host_tools.cloud.commands import CommandClient
    from host_tools.cloud.mqtt import BrokerUnreachable
    reg = o.open_registry()
    try:
        if device is not None:
            o.device(reg, device)
        host, port = o.broker_addr()
        password = o.need_password()
    except BaseException:
        reg.close()
        raise
    try:
        client = CommandClient(reg, o.broker_settings(host, port, password))
        if status_of is not None:
            import threading
            client.status_seen = threading.Event()  # type: ignore[attr-defined]
            client.status = None  # type: ignore[attr-defined]

            def on_status(topic: str, payload: bytes) -> None:
                client.status = (topic, bytes(payload))  # type: ignore[attr-defined]
                client.status_seen.set()  # type: ignore[attr-defined]
            client.mqtt.subscribe(f"v1/dev/{status_of}/up/status", on_status, qos=1)
        client.connect(timeout=5)
    except BrokerUnreachable as e:
        reg.close()
        fail(str(e), EXIT_UNREACHABLE)
    except (OSError, ValueError) as e:  # e.g. a TLS CA file that cannot be read
        reg.close()
        fail(f"cannot connect to the broker {host}:{port}: {e}", EXIT_UNREACHABLE)
    return reg, client


def register(cli: click.Group) -> None:
    @cli.command(context_settings={"ignore_unknown_options": False}, epilog=cmdspec.help_table())
    @click.argument("device")
    @click.argument("name")
    @click.argument("args", nargs=-1)
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                  help="seconds in all: one deadline for the broker's PUBACK and the device's signed result")
    @click.option("--ttl", type=click.IntRange(min=1, max=86400), default=60, show_default=True,
                  help="the command's lifetime (its exp = now + ttl)")
    @click.option("--unchecked", is_flag=True,
                  help="send a NAME or argument the list below does not know (newer firmware) as written")
    @click.pass_obj
    def cmd(o: Ctx, device: str, name: str, args: tuple[str, ...], timeout: float, ttl: int,
            unchecked: bool) -> None:
        """Send the signed command NAME to DEVICE (through the broker's cloud listener, --broker)
        and wait for its outcome.

        \b
        ARGS are KEY=VALUE: edgepay cmd gate-001 open 1=0 3=5
                            edgepay cmd gate-001 open target=0 hold_s=5
                            edgepay cmd gate-001 set_config hb_s=60
        Exit code: 0 SUCCEEDED, 10 FAILED, 11 REJECTED, 12 TIMED_OUT, 13 EXPIRED;
        2 for an unknown NAME or a bad argument (nothing is signed or sent).
        A device whose retained status says offline gets a warning; the command still goes.
        """
        from host_tools.protocol import ProtocolError
        if not 1 <= len(name.encode()) <= 24:
            fail(f"bad command name {name!r}: 1-24 bytes", EXIT_USAGE)
        cargs = parse_args(args)
        if not unchecked:
            try:
                cargs = cmdspec.check(name, cargs)
            except cmdspec.ArgProblem as e:
                fail(str(e), EXIT_USAGE)
        reg, client = connect(o, status_of=device, device=device)
        try:
            warn_if_offline(o, client, device)
            t0 = time.monotonic()
            try:
                c = client.send(device, name, cargs, timeout=timeout, ttl=ttl)
            except ProtocolError as e:
                fail(f"cannot sign this command: {e}")
            except (TypeError, ValueError) as e:
                fail(f"cannot sign this command: {e}")
            elapsed = time.monotonic() - t0
        finally:
            client.close()
            reg.close()
        state = c.state.value
        result = {"device": device, "name": name, "args": cargs, "state": state, "code": c.code,
                  "data": c.data, "cti": c.cti.hex(), "seq": c.seq, "exp": c.exp,
                  "elapsed_ms": round(elapsed * 1000, 1)}

        def human() -> None:
            color = {"SUCCEEDED": "green", "FAILED": "red", "REJECTED": "red"}.get(state, "yellow")
            line = f"[bold {color}]{state}[/] {device} {name}"
            if c.code and c.code != "ok":
                line += f" ({c.code})"
            line += f"  in {elapsed * 1000:.0f} ms  cti {c.cti.hex()} seq {c.seq}"
            o.console.print(line)
            if c.data is not None:
                o.console.print_json(json.dumps(c.data, default=_jsonable))
        o.emit(result, human)
        code = OUTCOME_EXIT.get(state, 1)
        if code:
            raise click.exceptions.Exit(code)

    @cli.command("time")
    @click.argument("device", required=False)
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                  help="with DEVICE: seconds in all for the exchange and the check")
    @click.option("--for", "serve_s", type=click.FloatRange(min=0.1), default=None,
                  help="without DEVICE: serve this many seconds (default: until interrupted)")
    @click.pass_obj
    def time_(o: Ctx, device: str | None, timeout: float, serve_s: float | None) -> None:
        """Time by challenge (SPEC §5): a device trusts its clock only after a signed answer to its
        own time request, so time is served, never pushed.

        \b
        edgepay time DEVICE   have DEVICE ask now (the sync_time command), answer it, check its clock
        edgepay time          answer every device's time requests until interrupted (--for S)
        Exit code with DEVICE: 0 clock trusted, 11 refused, 12 no answer, 13 expired.
        """
        if device is None:
            _serve_time(o, serve_s)
            return
        reg, client = connect(o, device=device)
        try:
            deadline = time.monotonic() + timeout
            ts = client.serve_time()
            n = ts.count(device)
            c = client.send(device, "sync_time", timeout=timeout)
            answered = c.ok and ts.wait_answered(device, max(0.0, deadline - time.monotonic()), after=n)
            clock = None
            if answered:  # the device checks the answer (nonce, round trip) before trusting it
                for _ in range(10):
                    time.sleep(0.2)
                    st = client.send(device, "get_state", timeout=max(0.5, deadline - time.monotonic()))
                    clock = st.data.get("clock") if st.ok and isinstance(st.data, dict) else None
                    if clock == 1:
                        break
        finally:
            client.close()
            reg.close()
        state = c.state.value if not c.ok else ("SUCCEEDED" if clock == 1 else "TIMED_OUT")
        result = {"device": device, "state": state, "code": c.code, "answered": bool(answered), "clock": clock}

        def human() -> None:
            if state == "SUCCEEDED":
                o.console.print(f"[bold green]time set[/] {device}: answered its time request, clock trusted")
            elif c.ok:
                o.console.print(f"[bold red]no time[/] {device}: " +
                                ("answered, but its clock is not trusted" if answered else "its request was not seen"))
            else:
                o.console.print(f"[bold red]{state}[/] {device} sync_time ({c.code})")
        o.emit(result, human)
        code = OUTCOME_EXIT.get(state, 1)
        if code:
            raise click.exceptions.Exit(code)


def warn_if_offline(o: Ctx, client, device: str, wait_s: float = 0.5) -> None:
    """A retained status (or will) saying offline: a warning line on stderr. The command is still
    sent: the broker holds it for the device's session, and its exp bounds how long it may run."""
    from host_tools.cloud.registry import open_uplink as verify
    seen = getattr(client, "status_seen", None)
    if seen is None or not seen.wait(wait_s):  # retained messages come right after SUBACK
        return
    topic, payload = client.status
    _, msg, err = verify(client.registry, {}, topic, payload)
    if err is None and msg is not None and msg.get("online") is False:
        o.note(f"[yellow]warning:[/] {device}'s retained status says offline: the command is sent and "
               "waits at the broker until the device reconnects (or it expires)")


def _serve_time(o: Ctx, serve_s: float | None) -> None:
    """The fleet's time responder in the foreground (host_tools/cloud/timeserver.py)."""
    reg, client = connect(o)
    ts = client.serve_time()
    if not o.json:
        o.console.print("[bold]serving time[/] to every device's time request (Ctrl-C stops)")
    try:
        end = None if serve_s is None else time.monotonic() + serve_s
        while end is None or time.monotonic() < end:
            time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
        reg.close()
    o.emit({"answered": dict(ts.answered), "refused": ts.refused},
           lambda: o.console.print(f"answered {sum(ts.answered.values())}, refused {ts.refused}"))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return str(v)
