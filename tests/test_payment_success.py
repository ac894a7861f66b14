"""payment_success_rate's arithmetic (issue 14 §4), fleet and site: each customer once, the
cloud's or provider's refusals left out, success only for a session that reconciled. The runs that
produce it are in tests/test_fleet.py and tests/test_demo.py."""
from types import SimpleNamespace

from host_tools.cli.simrun import payment_success as site_payment_success
from host_tools.sim.fleetreconcile import payment_success as fleet_payment_success
from host_tools.sim.scenarios import Job


def test_fleet_rate_leaves_out_refusals_and_counts_a_session_once():
    served = {("fg-1", "g0-1"), ("fg-1", "g0-2"), ("fv-2", "v0-1")}
    good = {("fg-1", "g0-1"), ("fv-2", "v0-1"), ("fv-2", "v0-9")}   # v0-9: not a customer's session
    counts = {"attempts": 6, "denied": 2, "turned_away": 1, "waited": 3}
    p = fleet_payment_success(counts, served, good)
    assert p["rate"] == 0.5 and p["succeeded"] == 2 and p["failed"] == 2
    assert p["refused"] == 2 and p["turned_away"] == 1 and p["waited"] == 3 and p["not_reconciled"] == 1
    assert fleet_payment_success({}, set(), set())["rate"] is None                      # nobody came
    assert fleet_payment_success({"attempts": 2, "denied": 2}, set(), set())["rate"] is None  # all refused


def test_site_rate_from_the_plan_and_the_reconciled_rows():
    jobs = [Job(10, "gate-1/entry", "car_in", {"plate": "P1", "qr": False}),
            Job(900, "gate-1/exit", "car_out", {"plate": "P1"}),          # the same customer: not an attempt
            Job(20, "vend-1", "vend", {"payer": "u1", "take": 1, "pick": 0.1}),
            Job(30, "vend-1", "vend", {"payer": "u2", "take": 1, "pick": 0.2}),   # refused by the provider
            Job(40, "rent-1", "rent", {"payer": "r1", "back": 800}),
            Job(5000, "rent-1", "rent", {"payer": "r2", "back": 5600})]   # after closing: never came
    plan = SimpleNamespace(jobs=jobs, refused=["acct-u2"], binds={"P1": "acct-p1", "u1": "acct-u1",
                                                                  "u2": "acct-u2", "r1": "acct-r1", "r2": "acct-r2"})
    rows = [{"device": "gate-1", "payer": "P1", "ok": True, "state": "closed"},
            {"device": "vend-1", "payer": "u1", "ok": True, "state": "closed"},
            {"device": "rent-1", "payer": "r1", "ok": False, "state": "closed"}]  # did not reconcile
    p = site_payment_success(SimpleNamespace(plan=plan), rows, played_to=3600)
    assert (p["attempts"], p["refused"], p["succeeded"], p["failed"]) == (4, 1, 2, 1)
    assert p["rate"] == round(2 / 3, 6) and p["failures"] == ["rent-1/r1"]
