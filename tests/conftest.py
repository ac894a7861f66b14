"""Shared fixtures. `broker`: a private Mosquitto (host_tools/broker.py) per test."""
import pytest

from host_tools.broker import Broker

# device users have the device-id ACL; "cloud" may read/write v1/#
USERS = {"cloud": "cloud-pw", "dev1": "dev1-pw", "dev2": "dev2-pw"}


def _make(**kw):
    return Broker(users=dict(USERS), cloud_users=("cloud",), **kw)


@pytest.fixture
def broker():
    b = _make()
    b.start()
    yield b
    b.close()


@pytest.fixture(scope="module")
def module_broker():
    b = _make()
    b.start()
    yield b
    b.close()
