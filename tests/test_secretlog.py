"""The guard of tests/secretlog.py finds a secret in a log in each form it collects, and nothing else."""
import base64
import json

from tests import secretlog


def test_a_key_or_password_in_a_log_is_found_by_kind():
    got: dict[str, str] = {}
    key = bytes(range(100, 132))
    secretlog.note_key(key, got)
    secretlog.note_password("p" * 24, got)
    secretlog.note_password("short", got)  # a literal this short would match by chance: not collected
    logs = [("a.log", "boot " + key.hex()), ("b.log", base64.b64encode(key).decode()),
            ("c.log", "user dev1 " + "p" * 24), ("d.log", "nothing to see, short")]
    assert sorted(secretlog.leaks(logs, got)) == ["a.log: device key (hex)", "b.log: device key (base64)",
                                                  "c.log: broker password"]


def test_device_configs_are_harvested(tmp_path):
    """Keys the CLI made in a subprocess are found through the configs it wrote."""
    got: dict[str, str] = {}
    key = bytes(range(32, 64))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "config.json").write_text(json.dumps({"key": key.hex(), "broker": {"password": "x" * 20}}))
    secretlog.harvest_configs(tmp_path, got)
    assert got == {key.hex(): "device key (hex)", base64.b64encode(key).decode(): "device key (base64)",
                   "x" * 20: "broker password"}
