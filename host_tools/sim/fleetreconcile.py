"""The fleet's reconciliation (host_tools/sim/fleet.py): the ledger against every simulated journal.

Per device, every record it ever journaled is in the ledger under its seq with the very bytes it
signed (SHA-256 of the envelope), its type, sid, amount and currency; the ledger has no record the
device did not journal. With `check_sessions`, every session of the fleet's devices is closed, the
provider charged exactly the ledger's amount for each, the session service raised no flag on them,
and the totals of the devices, the ledger and the provider agree to the minor unit.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from host_tools.cloud.payafter import OrderState

if TYPE_CHECKING:
    from host_tools.sim.fleet import Fleet


def reconcile(fleet: "Fleet", check_sessions: bool = True) -> dict:
    """Record by record (always) and, with `sessions`, session by session against the provider."""
    w = fleet.world
    problems: list[str] = []
    by_dev: dict[str, dict[int, Any]] = {}
    for r in w.ledger.records():
        by_dev.setdefault(r.device, {})[r.seq] = r
    n_rec = 0
    dev_total = 0
    for d in fleet.devices:
        name = d["id"]
        hist = fleet.history.get(name)
        if hist is None:
            problems.append(f"{name}: no journal came back from its worker")
            continue
        led = by_dev.get(name, {})
        seqs = set()
        for seq, digest, typ, sid, amount, cur in hist:
            n_rec += 1
            seqs.add(seq)
            r = led.get(seq)
            if r is None:
                problems.append(f"{name} seq {seq}: in the journal, not in the ledger")
                continue
            why = []
            if hashlib.sha256(r.raw).digest()[:16].hex() != digest:
                why.append("other bytes")
            if {6: "sess_open", 7: "sess_update", 8: "sess_close"}.get(r.type) != typ or r.sid != sid:
                why.append(f"type/sid {r.type}/{r.sid} != {typ}/{sid}")
            if r.amount != amount or r.currency != cur:
                why.append(f"amount {r.amount} {r.currency} != {amount} {cur}")
            if why:
                problems.append(f"{name} seq {seq}: " + "; ".join(why))
            if typ == "sess_close":
                dev_total += amount or 0
        for seq in sorted(set(led) - seqs):
            problems.append(f"{name} seq {seq}: in the ledger, not in the journal")
    orders = {o.order_no: o for o in w.provider.orders()}
    mine = {d["id"] for d in fleet.devices}
    sessions = [s for s in w.ledger.sessions() if s.device in mine] if check_sessions else []
    led_total = charged_total = 0
    open_n = 0
    for s in sessions:
        if s.state != "closed":
            open_n += 1
            problems.append(f"{s.device}/{s.sid}: still open")
            continue
        led_total += s.amount or 0
        o = orders.get(f"{s.device}:{s.sid}")
        charged = o.amount if (o is not None and o.state is OrderState.DONE) else 0
        charged_total += charged or 0
        if (charged or 0) != (s.amount or 0):
            problems.append(f"{s.device}/{s.sid}: charged {charged} != ledger {s.amount} "
                            f"(order {o.state.value if o else None})")
    # orders the cloud opened for a session the device never journaled (an answer that came after
    # the device had given up): no money moved, but the hold on the payer's credit is still there
    # until the service's sweep releases it. Counted, not a mismatch.
    have = {f"{s.device}:{s.sid}" for s in sessions}
    held = [no for no, o in orders.items() if no.split(":", 1)[0] in mine and no not in have
            and o.state in (OrderState.CREATED, OrderState.DOING)] if check_sessions else []
    flags = [f for f in w.svc.flags() if f.device in mine]  # the boards' own are in their reconciliation
    for f in flags:
        problems.append(f"flag {f.kind} {f.device}/{f.sid}: {f.detail}")
    if check_sessions and not (dev_total == led_total == charged_total):
        problems.append(f"totals differ: devices {dev_total}, ledger {led_total}, charged {charged_total}")
    ing = [x.stats for x in w.ingest]
    return {"ok": not problems, "records": n_rec, "sessions": len(sessions), "open_sessions": open_n,
            "orders_held_without_session": len(held),
            "totals": {"device": dev_total, "ledger": led_total, "charged": charged_total, "cur": "CNY"},
            "flags": len(flags),
            "ingest": {"committed": sum(s["committed"] for s in ing), "duplicates": sum(s["duplicates"] for s in ing),
                       "refused": sum(sum(s["refused"].values()) for s in ing), "acks": sum(s["acks"] for s in ing)},
            "problems": problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])}
