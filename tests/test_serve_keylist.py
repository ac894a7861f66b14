"""`edgepay serve`'s campaign runner knows the release key list action (host_tools/cloud/keylist_action.py):
a `keylist` campaign created in the store (as `edgepay release push-keys --no-wait` or the API leave
it) is run by the service, whose runner sends the signed list to the device as set_release_keys
(without the action it would leave the campaign to "another process" for ever). Real Mosquitto."""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.cloud.keylist_action import KeylistAction
from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout import Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.protocol.keylist import KeyList, sign_keylist
from host_tools.service.config import ServiceConfig
from host_tools.service.run import Service
from tests.sessionkit import CLOUD, FakeDevice, wait_for


def test_serve_runs_a_key_list_campaign(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", CLOUD[1])
    cfg = ServiceConfig(broker_port=broker.cloud_port, user=CLOUD[0], registry=str(tmp_path / "registry.db"),
                        ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    reg = Registry(cfg.registry)
    dev = FakeDevice(broker, reg, "gate-k1", "gate")     # verifies what it gets; answers nothing
    signer = Ed25519PrivateKey.generate()
    raw = sign_keylist(signer, KeyList(1, (signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),)))
    store = RolloutStore.open(cfg.ledger)
    try:
        Rollouts(store, {"keylist": KeylistAction(None)}).create(  # type: ignore[arg-type]  (create sends nothing)
            "keys-1", "keylist", KeylistAction.spec(raw), ["gate-k1"], cohorts=(100,), rate=600, timeout_s=30)
        with Service(cfg, only=["campaigns"]):
            wait_for(lambda: bool(dev.cmds("set_release_keys")), timeout=15, what="the list sent by serve's runner")
            assert dev.cmds("set_release_keys") == [{1: raw}]
            wait_for(lambda: [t.state for t in store.targets("keys-1")] == ["started"], what="the target started")
    finally:
        store.close()
        dev.close()
        reg.close()
    assert not dev.bad, dev.bad
