"""The end of a simulated hour: every ledger session reconciled against the amount its device
signed, what the provider charged and what the scenario expected (host_tools/sim/world.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from host_tools.cloud.payafter import OrderState
from host_tools.protocol import open_message
from host_tools.protocol import topic as topic_for

if TYPE_CHECKING:
    from host_tools.sim.world import World


def reconcile(w: "World", expected: dict[tuple[str, str], int] | None = None) -> dict:
    """Every ledger session: the amount the device signed (its sess_close, verified again from
    the raw envelope) vs the ledger's vs what the provider charged, plus the scenario's
    expectation where it has one; flags; devices' journals; orders left open."""
    rows = []
    problems: list[str] = []
    orders = {o.order_no: o for o in w.provider.orders()}
    seen_orders = set()
    flags = w.svc.flags()
    flag_keys: dict[tuple[str, str], list[str]] = {}
    for f in flags:
        flag_keys.setdefault((f.device, f.sid), []).append(f.kind)
    offline_sids = {(r.device, r.sid) for r in w.ledger.records() if r.offline}
    for s in sorted(w.ledger.sessions(), key=lambda s: (s.device, s.t0 or 0, s.sid)):
        if s.device not in w.devices:  # not one of the world's boards (a fleet's device: fleet.py reconciles it)
            continue
        close = None
        if s.close_seq is not None:
            for r in w.ledger.records(s.device):
                if r.seq == s.close_seq:
                    close = r
                    break
        dev_amount = None
        if close is not None:
            k = w._keys[s.device]
            msg = open_message(k.key, k.kid, topic_for(s.device, "sess_close"), close.raw)
            dev_amount = msg.get("amount")
        order_no = f"{s.device}:{s.sid}"
        o = orders.get(order_no)
        if o is not None:
            seen_orders.add(order_no)
        charged = o.amount if (o is not None and o.state is OrderState.DONE) else (None if o else 0)
        exp = (expected or {}).get((s.device, s.sid))
        st = w.svc.settle_status(s.device, s.sid)
        why = []
        if s.state != "closed":
            why.append("still open")
        if dev_amount != s.amount:
            why.append(f"ledger {s.amount} != device {dev_amount}")
        if charged != s.amount and not (charged is None and not s.amount):
            why.append(f"charged {charged} != ledger {s.amount}")
        if exp is not None and exp != s.amount:
            why.append(f"expected {exp} != {s.amount}")
        fl = flag_keys.get((s.device, s.sid), [])
        if fl:
            why.append("flags " + ",".join(fl))
        rows.append({"device": s.device, "sid": s.sid, "payer": s.payer, "state": s.state,
                     "offline": (s.device, s.sid) in offline_sids, "reason": s.reason, "t0": s.t0, "t1": s.t1,
                     "minutes": round((s.t1 - s.t0) / 60) if (s.t0 and s.t1) else None,
                     "device_amount": dev_amount, "ledger_amount": s.amount, "charged": charged,
                     "expected": exp, "order": o.state.value if o else None, "settle": st.get("status"),
                     "ok": not why, "why": "; ".join(why)})
        if why:
            problems.append(f"{s.device}/{s.sid}: {'; '.join(why)}")
    stray = [no for no, o in orders.items() if no not in seen_orders and o.state is not OrderState.DONE
             and o.state is not OrderState.REVOKED]
    for no in stray:
        problems.append(f"provider order {no} is {orders[no].state.value} with no ledger session")
    open_orders = [no for no, o in orders.items() if o.state in (OrderState.CREATED, OrderState.DOING)]
    for no in open_orders:
        if no in seen_orders:
            problems.append(f"provider order {no} still {orders[no].state.value}")
    for f in flags:
        if (f.device, f.sid) not in {(r["device"], r["sid"]) for r in rows}:
            problems.append(f"flag {f.kind} on {f.device}/{f.sid} (no ledger session): {f.detail}")
    devices = {}
    for name, d in w.devices.items():
        st = w.get_state(name, timeout=5) or {}
        devices[name] = {"kind": d.kind, "jdepth": st.get("jdepth"), "boots": st.get("boots"),
                         "power_cuts": d.power_cuts, "heap_used": st.get("heap_used")}
        if st.get("jdepth") != 0:
            problems.append(f"{name}: journal depth {st.get('jdepth')} (records not acknowledged)")
    problems += [f"scenario error: {e}" for e in w.errors]
    by_kind: dict[str, int] = {}
    for r in rows:
        k = w.devices[r["device"]].kind if r["device"] in w.devices else "?"
        by_kind[k] = by_kind.get(k, 0) + 1
    total_ledger = sum(r["ledger_amount"] or 0 for r in rows)
    total_device = sum(r["device_amount"] or 0 for r in rows)
    total_charged = sum(r["charged"] or 0 for r in rows)
    if not (total_ledger == total_device == total_charged):
        problems.append(f"totals differ: device {total_device}, ledger {total_ledger}, charged {total_charged}")
    ingest = [w.stats for w in w.ingest]
    return {"ok": not problems, "sessions": len(rows), "by_kind": by_kind,
            "offline_sessions": sum(1 for r in rows if r["offline"]),
            "totals": {"device": total_device, "ledger": total_ledger, "charged": total_charged, "cur": "CNY"},
            "orders": len(orders), "flags": [{"kind": f.kind, "device": f.device, "sid": f.sid, "detail": f.detail}
                                             for f in flags],
            "outages": w.outages, "power_cuts": w.power_cuts, "devices": devices,
            "ingest": {"committed": sum(s["committed"] for s in ingest),
                       "duplicates": sum(s["duplicates"] for s in ingest),
                       "refused": sum(sum(s["refused"].values()) for s in ingest)},
            "problems": problems, "rows": rows}
