"""A release key list rolled out as a campaign (issue 12 §1 and §3, host_tools/cloud/keylist_action.py)
on VM boards and a real Mosquitto, the campaign's states on SQLite and PostgreSQL: a paused
campaign starts nobody, resumed it takes the list to every board in cohorts; a board that already
holds the list (pushed by hand before) counts as succeeded; a board whose trust the list does not
fit fails with the device's reason and keeps its keys; a list every board refuses halts the
campaign at its threshold, the rest skipped and untouched; a cancel skips everyone; and `edgepay
release push-keys --file L --kind gate` runs it from the CLI, `campaign status` shows it."""
from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from click.testing import CliRunner

from host_tools.cli import cli
from host_tools.cloud.keylist_action import KeylistAction, outcome
from host_tools.cloud.rollout import Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.protocol.keylist import KeyList, KeyListError, kid_of, sign_keylist
from tests.otakit import Releases
from tests.test_keylist_vm import raw_pub, stored


def _run(ro, cid, limit=90):
    deadline = time.monotonic() + limit
    while not ro.status(cid).final and time.monotonic() < deadline:
        ro.tick()
        time.sleep(0.2)
    return ro.status(cid)


def _states(store, cid):
    return {t.device: (t.state, t.reason) for t in store.targets(cid)}


def test_a_key_list_campaign_on_vm_boards(site, tmp_path, ledger_url):
    rel, other = Releases(tmp_path / "rel"), Releases(tmp_path / "other")
    names = [f"kl-{i}" for i in range(5)]
    boards = {n: site.board(n, "gate", ota=(other if n == "kl-4" else rel).config()) for n in names}
    new = Ed25519PrivateKey.generate()
    keys = (raw_pub(rel.key), raw_pub(rel.spare), raw_pub(new))
    good = sign_keylist(rel.key, KeyList(1, keys))
    res = site.cmd("kl-1", "set_release_keys", {1: good}, timeout=15)
    assert res.ok and res.data == {"v": 1, "keys": 3}
    store = RolloutStore.open(ledger_url)
    try:
        ro = Rollouts(store, {"keylist": KeylistAction(site.c)})
        ro.create("keys-1", "keylist", KeylistAction.spec(good), names, cohorts=(20, 60, 100), rate=600,
                  timeout_s=20, abort_share=0.5)
        ro.pause("keys-1")
        for _ in range(3):
            ro.tick()
        assert ro.status("keys-1").counts == {"pending": 5}            # paused: nobody started
        ro.resume("keys-1")
        c = _run(ro, "keys-1")
        assert c.state == "done", (c.state, c.reason, _states(store, "keys-1"))
        st = _states(store, "keys-1")
        assert st["kl-1"] == ("succeeded", "stale_version"), st         # already on v1: succeeded
        assert st["kl-4"] == ("failed", "unknown_key"), st              # signed by a key it does not trust
        assert all(st[n] == ("succeeded", None) for n in ("kl-0", "kl-2", "kl-3")), st
        for n in ("kl-0", "kl-1", "kl-2", "kl-3"):
            assert stored(boards[n])["v"] == 1 and len(stored(boards[n])["keys"]) == 3, n
        assert stored(boards["kl-4"]) is None                           # a refusal changes nothing
        assert c.spec["v"] == 1 and c.spec["signer"] == kid_of(raw_pub(rel.key)).hex()
        # a list every board refuses (a signer nobody trusts): halts at its threshold
        bad = sign_keylist(Ed25519PrivateKey.generate(), KeyList(2, keys))
        ro.create("keys-bad", "keylist", KeylistAction.spec(bad), names, cohorts=(40, 100), rate=600,
                  timeout_s=20, abort_share=0.5)
        c = _run(ro, "keys-bad")
        assert c.state == "halted" and "2 of 2 finished failed" in c.reason, (c.state, c.reason)
        st = _states(store, "keys-bad")
        assert [st[n][0] for n in names] == ["failed", "failed", "skipped", "skipped", "skipped"], st
        assert st["kl-0"] == ("failed", "unknown_key")
        for n in ("kl-2", "kl-3"):
            assert stored(boards[n])["v"] == 1                           # untouched
        # cancelled before it ran: everyone skipped, nothing sent
        step2 = sign_keylist(new, KeyList(2, keys[1:], (kid_of(keys[0]),)))
        ro.create("keys-2", "keylist", KeylistAction.spec(step2), names, rate=600, timeout_s=20)
        c = ro.cancel("keys-2")
        assert c.state == "cancelled" and c.counts == {"skipped": 5}
        assert stored(boards["kl-0"])["v"] == 1
        # a restart of the cloud side: a new engine on the same database carries a campaign on
        ro.create("keys-2b", "keylist", KeylistAction.spec(step2), names[:2], cohorts=(100,), rate=600, timeout_s=20)
        ro.tick()                                                       # started here ...
        ro2 = Rollouts(RolloutStore.open(ledger_url), {"keylist": KeylistAction(site.c)})
        try:
            c = _run(ro2, "keys-2b")                                    # ... finished by another runner
            assert c.state == "done" and c.counts == {"succeeded": 2}, (c.counts, _states(ro2.store, "keys-2b"))
        finally:
            ro2.store.close()
        assert stored(boards["kl-0"])["v"] == 2 and stored(boards["kl-1"])["v"] == 2
    finally:
        store.close()


def test_the_spec_refuses_what_is_no_key_list_and_outcomes_read_the_device():
    with pytest.raises(KeyListError):
        KeylistAction.spec(b"\x00not a list")

    class Cmd:
        def __init__(self, ok, code, data, state="SUCCEEDED"):
            from host_tools.cloud.commands import State
            self.ok, self.code, self.data, self.state = ok, code, data, State(state)
    assert outcome(Cmd(True, "ok", {"v": 3, "keys": 2}), 3) == (True, None)
    assert outcome(Cmd(True, "ok", {"v": 4, "keys": 2}), 3) == (False, "took list v4")
    assert outcome(Cmd(False, "refused", {"why": "stale_version"}), 3) == (True, "stale_version")
    assert outcome(Cmd(False, "refused", {"why": "revoked_key"}), 3) == (False, "revoked_key")
    assert outcome(Cmd(False, None, None, "EXPIRED"), 3) == (False, "expired")


def test_push_keys_to_a_kind_runs_a_campaign(site, tmp_path):
    from tests.agentkit import CLOUD
    rel = Releases(tmp_path / "rel")
    gates = {n: site.board(n, "gate", ota=rel.config()) for n in ("pk-0", "pk-1", "pk-2")}
    site.board("pv-0", "vending", ota=rel.config())
    lst = tmp_path / "keys-1.cose"
    lst.write_bytes(sign_keylist(rel.key, KeyList(1, (raw_pub(rel.key), raw_pub(rel.spare),
                                                      raw_pub(Ed25519PrivateKey.generate())))))
    db = str(tmp_path / "ledger.db")
    base = ["--registry", str(site.root / "registry.db"), "--broker", f"127.0.0.1:{site.broker.cloud_port}",
            "--user", CLOUD[0], "--password", CLOUD[1], "--json"]

    def edgepay(*args):
        r = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    r = edgepay("release", "push-keys", "pk-0", "--file", str(lst), "--kind", "gate")
    assert r.exit_code == 2 and "not both" in r.stdout, r.output
    r = edgepay("release", "push-keys", "--file", str(lst))
    assert r.exit_code == 2 and "name the devices" in r.stdout, r.output
    r = edgepay("release", "push-keys", "pk-0", "--file", str(lst))             # one by hand first
    assert r.exit_code == 0 and json.loads(r.stdout)["results"][0]["data"] == {"v": 1, "keys": 3}, r.output
    r = edgepay("release", "push-keys", "--file", str(lst), "--kind", "gate", "--id", "k1", "--cohorts", "34,100",
                "--rate", "600", "--db", db, "--every", "0.2")
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert (final["id"], final["action"], final["state"]) == ("k1", "keylist", "done"), final
    assert final["counts"] == {"succeeded": 3} and final["spec"]["v"] == 1
    r = edgepay("campaign", "status", "k1", "--db", db)
    assert r.exit_code == 0, r.output
    t = {x["device"]: x for x in json.loads(r.stdout)["targets"]}
    assert set(t) == {"pk-0", "pk-1", "pk-2"} and t["pk-0"]["reason"] == "stale_version", t
    assert all(stored(b)["v"] == 1 for b in gates.values())
    r = edgepay("release", "push-keys", "--file", str(lst), "--kind", "gate", "--id", "k1", "--db", db)
    assert r.exit_code == 2 and "exists" in r.stdout
    r = edgepay("release", "push-keys", "--file", str(lst), "--board", "no-such-board", "--db", db)
    assert r.exit_code == 1 and "no active device" in r.stdout
    r = edgepay("release", "push-keys", "--file", str(lst), "--all", "--id", "k2", "--no-wait", "--db", db)
    assert r.exit_code == 0 and json.loads(r.stdout)["devices"] == 4, r.output
