"""Shared fixtures. `broker`: a private Mosquitto (host_tools/broker.py) per test."""
import pytest

from host_tools.broker import Broker

pytest_plugins = ["tests.secretlog"]  # no generated key or password in any log the suite writes

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


@pytest.fixture
def site(broker, tmp_path):
    """A whole cloud side around VM boards (tests/appkit.py): ingest, ledger, provider, sessions."""
    from tests.appkit import make_site
    s = make_site(broker, tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def module_broker():
    b = _make()
    b.start()
    yield b
    b.close()


# ---- PostgreSQL: one private cluster per test session (host_tools/pgserver.py) ------------------
@pytest.fixture(scope="session")
def pg():
    """A running private PostgreSQL cluster; `pg.new_database()` gives a fresh database's conninfo.

    Missing PostgreSQL fails the test in CI (CI=true) with the reason, and skips it elsewhere.
    """
    import os

    from host_tools.pgserver import PgServer, PgUnavailable
    try:
        import psycopg  # noqa: F401
        server = PgServer().start()
    except (PgUnavailable, ImportError) as e:
        msg = f"PostgreSQL is needed for this test and is not available: {e}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI: run scripts/setup.sh, which installs postgresql and psycopg)")
        pytest.skip(msg)
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "pg"])
def ledger_url(request, tmp_path):
    """A fresh database for a test, once on SQLite and once on PostgreSQL (the ledger's backends,
    which the registry, the session store and the rollouts share)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg").new_database()
