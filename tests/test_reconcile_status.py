"""The site view's reconciliation status (GET /v1/reconciliation, host_tools/cloud/reconcile_status.py)
on `edgepay serve` with ingest and the API, real Mosquitto: each device of a site is reconciled,
pending, unknown, flagged or mismatch, for the reason the cloud's own tables give; a journal export
that does not reconcile marks its device until one that does; the totals cover the whole site;
paging, a status filter, a scoped account's sites and a bad status each behave."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from host_tools.cloud.accounts import Accounts
from host_tools.cloud.heartbeats import Heartbeats
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_model import Flag
from host_tools.cloud.session_store import SessionStore
from host_tools.service.config import ServiceConfig
from host_tools.service.run import Service
from tests.sessionkit import CLOUD, FakeDevice, wait_for
from tests.test_ledger import DeviceChain
from tests.test_serve import call


@pytest.fixture
def cfg(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", CLOUD[1])
    monkeypatch.setenv("RECON_TOKEN", "recon-token")
    return ServiceConfig(broker_port=broker.cloud_port, user=CLOUD[0], registry=str(tmp_path / "registry.db"),
                         ledger=f"sqlite:///{tmp_path / 'ledger.db'}", http_port=0, token_env="RECON_TOKEN")


def test_each_device_of_a_site_says_where_its_money_stands(broker, cfg):
    reg = Registry(cfg.registry)
    dev = FakeDevice(broker, reg, "lota-1", "gate")       # sends real records through ingest
    for name in ("lota-2", "lota-3", "lota-4", "lota-5", "lotb-1"):
        reg.add(name, bytes(32), "gate", "sim")
    tok = "recon-token"
    try:
        with Service(cfg, only=["ingest", "api"]) as svc:
            u = svc.url + "/v1/reconciliation"
            now = int(time.time())
            r1 = dev.record("sess_open", sid="s-1", payer="P1", t0=now - 60, slot=0, auth="a-1")
            r2 = dev.record("sess_close", sid="s-1", payer="P1", t0=now - 60, t1=now, slot=0, auth="a-1",
                            amount=250, cur="EUR", lines=[["park", 1, 250]])
            led = open_ledger(cfg.ledger)
            wait_for(lambda: len(led.records("lota-1")) == 2, what="both records committed")
            hb = Heartbeats(reg.db)
            for name, jdepth in (("lota-1", 0), ("lota-2", 3), ("lota-4", 0), ("lota-5", 0), ("lotb-1", 0)):
                hb.add(name, at=now, heap=30000, rssi=-60, jdepth=jdepth, uptime=100)
            store = SessionStore.open(cfg.ledger)
            store.add_flag(Flag("charge_mismatch", "lota-4", "s-9", "charged 300, ledger 250", device_amount=250,
                                charged=300, cur="EUR", at=now))
            st, body = call(u + "?site=lota-", token=tok)
            assert st == 200, body
            got = {r["device"]: r for r in body["devices"]}
            assert sorted(got) == ["lota-1", "lota-2", "lota-3", "lota-4", "lota-5"]   # lotb-1 is another site
            assert got["lota-1"]["status"] == "reconciled" and got["lota-1"]["records"] == 2
            assert got["lota-1"]["last_seq"] == dev.chain.seq
            assert got["lota-2"]["status"] == "pending" and "3 record(s)" in got["lota-2"]["why"]
            assert got["lota-3"]["status"] == "unknown"
            assert got["lota-4"]["status"] == "flagged" and got["lota-4"]["flags"] == {"charge_mismatch": 1}
            assert body["totals"] == {"devices": 5, "mismatch": 0, "flagged": 1, "pending": 1, "unknown": 1,
                                      "reconciled": 2}

            # a journal export that does not reconcile marks the device, one that does clears it
            seqs = [dev.chain.seq - 1, dev.chain.seq]
            bad = [{"seq": seqs[0], "raw": r2.hex()}, {"seq": seqs[1], "raw": r2.hex()}]
            assert call(svc.url + "/v1/devices/lota-1/reconcile", "POST", {"records": bad}, tok)[1]["ok"] is False
            row = call(u + "?site=lota-1", token=tok)[1]["devices"][0]
            assert row["status"] == "mismatch" and "1 with other bytes" in row["why"], row
            assert row["export"]["mismatched"] == 1 and row["export"]["journal_records"] == 2
            good = [{"seq": seqs[0], "raw": r1.hex()}, {"seq": seqs[1], "raw": r2.hex()}]
            assert call(svc.url + "/v1/devices/lota-1/reconcile", "POST", {"records": good}, tok)[1]["ok"] is True
            assert call(u + "?site=lota-1", token=tok)[1]["devices"][0]["status"] == "reconciled"

            # a record held in quarantine is money the ledger does not have
            led.quarantine_unplaced("lota-5", b"\x01\x02", "no_chain", "test")
            row = call(u + "?site=lota-5", token=tok)[1]["devices"][0]
            assert row["status"] == "mismatch" and row["quarantined"] == 1

            # a re-provisioned device's fresh board has its own chain (lota-3~2): it counts as lota-3's
            old, fresh = DeviceChain("lota-3"), DeviceChain("lota-3")   # two boards, one id
            led.commit(old.records([old.make("sess_open", sid="s-1", payer="P", t0=now - 9, slot=0)]))
            led.commit([replace(r, device="lota-3~2") for r in fresh.records([
                fresh.make("sess_open", sid="s-1", payer="P", t0=now, slot=0),
                fresh.make("sess_open", sid="s-2", payer="P", t0=now, slot=1)])])
            row = call(u + "?site=lota-3", token=tok)[1]["devices"][0]
            assert (row["records"], row["open_sessions"], row["last_seq"]) == (3, 3, fresh.seq), row

            # a page of two, its Link, then the rest; one status only
            st, page = call(u + "?site=lota-&limit=2", token=tok)
            assert [r["device"] for r in page["devices"]] == ["lota-1", "lota-2"]
            assert page["totals"]["devices"] == 5                        # the totals are the site's
            st, rest = call(u + "?site=lota-&after=lota-2", token=tok)
            assert [r["device"] for r in rest["devices"]] == ["lota-3", "lota-4", "lota-5"]
            st, only = call(u + "?status=pending", token=tok)
            assert [r["device"] for r in only["devices"]] == ["lota-2"]
            assert call(u + "?status=lost", token=tok)[0] == 422

            # an account scoped to lotb- sees its site and is refused another's
            acc = Accounts(reg.db)
            acc.add_user("bee", "viewer", sites=["lotb-"])
            btok, _ = acc.create_token("bee", "t")
            st, mine = call(u, token=btok)
            assert st == 200 and [r["device"] for r in mine["devices"]] == ["lotb-1"]
            assert call(u + "?site=lota-", token=btok)[0] == 403
            assert call(u)[0] == 401
            led.close()
            store.close()
    finally:
        dev.close()
        reg.close()
