"""Views of a running World for `edgepay sim` and `edgepay demo`: a rich Live dashboard on a
terminal, plain event lines otherwise, JSON lines with --json; and the reconciliation report."""
from __future__ import annotations

import json
import sys
import threading
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from host_tools.sim.world import World


def money(minor: int | None) -> str:
    return "-" if minor is None else f"{minor / 100:.2f}"


class View:
    """mode: "live" (rich Live table, TTY), "lines" (one plain line per event), "json" (JSON lines)."""

    def __init__(self, mode: str, title: str, console: Console | None = None):
        self.mode = mode
        self.title = title
        self.console = console or Console(highlight=False)
        self.world: World | None = None
        self.recent: deque = deque(maxlen=9)
        self._live: Live | None = None
        self._lock = threading.Lock()

    @staticmethod
    def pick(as_json: bool, console: Console) -> str:
        if as_json:
            return "json"
        return "live" if console.is_terminal else "lines"

    # -- the event sink (World.on_event)
    def on_event(self, e: dict) -> None:
        with self._lock:
            self.recent.append(e)
            if self.mode == "json":
                sys.stdout.write(json.dumps(dict(e, type="event"), sort_keys=True, default=str) + "\n")
                sys.stdout.flush()
            elif self.mode == "lines":
                self.console.print(f"{e['sim']} {e['device']:<8} {escape(e['event'])}: {escape(e['detail'])}")

    def attach(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> "View":
        if self.mode == "live":
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              get_renderable=self._render, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def _render(self):
        w = self.world
        if w is None or not w.started:
            return Panel(f"{self.title}: starting the site…")
        t = Table(expand=True, box=None, header_style="bold")
        for col in ("device", "kind", "fw", "state", "online", "last event", "journal", "sessions", "boots"):
            t.add_column(col, no_wrap=col != "last event", overflow="ellipsis")
        for r in w.status():
            online = "[green]● online[/]" if r["online"] else f"[red]○ {escape(r['link'])}[/]"
            t.add_row(r["device"], r["kind"], escape(r.get("fw") or "-"), escape(r["state"]), online,
                      escape(r["last"][:60]),
                      "-" if r["jdepth"] is None else str(r["jdepth"]),
                      f"{r['sessions_closed']} closed, {r['sessions_open']} open", str(r["boots"]))
        phase = w.phase
        phase = f"[bold red]{phase}[/]" if phase != "running" else f"[green]{phase}[/]"
        head = (f"[bold]{escape(self.title)}[/]  simulated {w.clock.stamp()} (x{w.rate:g})  {phase}  "
                f"outages {w.outages}  power cuts {w.power_cuts}  errors {len(w.errors)}")
        ev = Table.grid(padding=(0, 1))
        for e in list(self.recent):
            style = ("red" if e["event"] in ("error", "alarm", "outage", "power cut") else
                     "cyan" if e["event"] in ("update", "campaign", "reboot", "rebooted") else "dim")
            ev.add_row(f"[{style}]{e['sim']}[/]", f"[{style}]{escape(e['device'])}[/]",
                       f"[{style}]{escape(e['event'])}[/]", escape(e["detail"][:80]))
        return Panel(Group(head, t, "", ev), title="edgepay", border_style="blue")


def print_report(rep: dict, console: Console, title: str = "Reconciliation") -> None:
    """The reconciliation as people read it: every session, then the verdict."""
    t = Table(title=title, header_style="bold", show_lines=False)
    for col in ("device", "session", "payer", "how", "min", "device", "ledger", "charged", "expected", "settled"):
        t.add_column(col, justify="right" if col in ("min", "device", "ledger", "charged", "expected") else "left")
    seen_dev = set()
    for r in rep["rows"]:
        how = ("offline, " if r["offline"] else "") + (r["reason"] or r["state"])
        ok = "[green]✓[/]" if r["ok"] else f"[red]✗ {escape(r['why'])}[/]"
        dev = r["device"] if r["device"] not in seen_dev else ""
        seen_dev.add(r["device"])
        t.add_row(dev, r["sid"], escape(r["payer"] or ""), how,
                  "" if r["minutes"] is None else str(r["minutes"]),
                  money(r["device_amount"]), money(r["ledger_amount"]), money(r["charged"]),
                  money(r["expected"]), f"{r['settle']} {ok}")
    console.print(t)
    tot = rep["totals"]
    console.print(f"sessions {rep['sessions']} ({', '.join(f'{k} {v}' for k, v in sorted(rep['by_kind'].items()))}), "
                  f"offline {rep['offline_sessions']}; totals {tot['cur']}: devices {money(tot['device'])}, "
                  f"ledger {money(tot['ledger'])}, provider charged {money(tot['charged'])}")
    devs = ", ".join(f"{n} journal {d['jdepth']} boots {d['boots']}" for n, d in rep["devices"].items())
    console.print(f"outages {rep['outages']}, power cuts {rep['power_cuts']}; {devs}")
    pay = rep.get("payments")
    if pay and pay["rate"] is not None:
        console.print(f"payment success {pay['rate']:.4f}: {pay['succeeded']} of {pay['attempts'] - pay['refused']} "
                      f"customers settled and reconciled ({pay['attempts']} came, {pay['refused']} refused by the "
                      f"provider, left out)" + (f"; failed: {', '.join(pay['failures'])}" if pay["failures"] else ""))
    fw = rep.get("firmware") or {}
    if fw:
        ups = rep.get("updates") or {}

        def update_of(n: str) -> str:
            u = ups.get(n) or {}
            if not u:
                return ""
            done = "confirmed" if u.get("confirmed") else (u.get("states") or ["?"])[-1]
            return f" ({done}{', deferred: ' + u['deferred'] if u.get('deferred') else ''})"
        console.print("firmware: " + ", ".join(f"{n} {v or '?'}{update_of(n)}" for n, v in fw.items()))
    flags = rep["flags"]
    console.print("flags: " + ("none" if not flags else
                               "; ".join(f"{f['kind']} {f['device']}/{f['sid']}: {escape(f['detail'])}" for f in flags)))
    if rep["ok"]:
        console.print("[bold green]RECONCILED[/]: every session closed and settled; the amounts the devices "
                      "signed, the ledger's and the provider's charges agree.")
    else:
        console.print("[bold red]NOT RECONCILED[/]:")
        for p in rep["problems"]:
            console.print(f"  - {escape(p)}")
