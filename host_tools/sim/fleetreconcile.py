"""The fleet's reconciliation (host_tools/sim/fleet.py): the ledger against every simulated journal.

Per device, every record it ever journaled is in the ledger under its seq with the very bytes it
signed (SHA-256 of the envelope), its type, sid, amount and currency; the ledger has no record the
device did not journal. With `check_sessions`, every session of the fleet's devices is closed, the
provider charged exactly the ledger's amount for each, the session service raised no flag on them,
and the totals of the devices, the ledger and the provider agree to the minor unit.

`payment_success_rate`: of the customers the scenario brought (host_tools/sim/fleetscenario.py
counts each once as an attempt, however often its device retried), leaving out those the cloud
refused (an unknown payer, an account the provider refuses), the share whose session is in the
ledger closed, with every record of it as the device journaled it, charged exactly the ledger's
amount and unflagged, by the end of the run and its drain. A customer turned away (the device
not ready within fleetscenario.PATIENCE), an authorisation never answered, or a session that did
not reconcile is a failure. None when nobody came (idle, flood).
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
    served: set[tuple[str, str]] = set()   # (device, sid) of every customer session a device opened
    bad: set[tuple[str, str]] = set()      # ... and those that did not reconcile
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
            if typ == "sess_open" and sid and not sid.startswith("fl-"):  # fl-: bench/fleet.py's flood
                served.add((name, sid))
            r = led.get(seq)
            if r is None:
                problems.append(f"{name} seq {seq}: in the journal, not in the ledger")
                bad.add((name, sid))
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
                bad.add((name, sid))
            if typ == "sess_close":
                dev_total += amount or 0
        for seq in sorted(set(led) - seqs):
            problems.append(f"{name} seq {seq}: in the ledger, not in the journal")
    orders = {o.order_no: o for o in w.provider.orders()}
    mine = {d["id"] for d in fleet.devices}
    sessions = [s for s in w.ledger.sessions() if s.device in mine] if check_sessions else []
    led_total = charged_total = 0
    open_n = 0
    good: set[tuple[str, str]] = set()
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
        else:
            good.add((s.device, s.sid))
    # orders the cloud opened for a session the device never journaled (an answer that came after
    # the device had given up): no money moved, but the hold on the payer's credit is still there
    # until the service's sweep releases it. Counted, not a mismatch.
    have = {f"{s.device}:{s.sid}" for s in sessions}
    held = [no for no, o in orders.items() if no.split(":", 1)[0] in mine and no not in have
            and o.state in (OrderState.CREATED, OrderState.DOING)] if check_sessions else []
    flags = [f for f in w.svc.flags() if f.device in mine]  # the boards' own are in their reconciliation
    for f in flags:
        problems.append(f"flag {f.kind} {f.device}/{f.sid}: {f.detail}")
        bad.add((f.device, f.sid))
    if check_sessions and not (dev_total == led_total == charged_total):
        problems.append(f"totals differ: devices {dev_total}, ledger {led_total}, charged {charged_total}")
    ing = [x.stats for x in w.ingest]
    pay = payment_success(fleet.counts, served, good - bad) if check_sessions else None
    return {"payment_success_rate": pay["rate"] if pay else None, "payments": pay,
            "ok": not problems, "records": n_rec, "sessions": len(sessions), "open_sessions": open_n,
            "orders_held_without_session": len(held),
            "totals": {"device": dev_total, "ledger": led_total, "charged": charged_total, "cur": "CNY"},
            "flags": len(flags),
            "ingest": {"committed": sum(s["committed"] for s in ing), "duplicates": sum(s["duplicates"] for s in ing),
                       "refused": sum(sum(s["refused"].values()) for s in ing), "acks": sum(s["acks"] for s in ing)},
            "problems": problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])}


def payment_success(counts: dict[str, int], served: set[tuple[str, str]], good: set[tuple[str, str]]) -> dict:
    """The customers' outcomes (fleetscenario's counters) and the rate: reconciled sessions over
    attempts less the cloud's refusals."""
    attempts = counts.get("attempts", 0)
    refused = counts.get("denied", 0)
    ok = len(served & good)
    asked = attempts - refused
    return {"rate": round(ok / asked, 6) if asked > 0 else None, "attempts": attempts, "refused": refused,
            "succeeded": ok, "failed": asked - ok, "waited": counts.get("waited", 0),
            "turned_away": counts.get("turned_away", 0),
            "unanswered": counts.get("unanswered", 0), "errors": counts.get("customer_error", 0),
            "not_reconciled": len(served - good)}
