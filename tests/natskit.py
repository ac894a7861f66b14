"""The 3-node NATS cluster as the cluster tests start it (host_tools/natscluster.py): skipped where
nats-py or nats-server is missing, a failure in CI (scripts/setup.sh installs the dev extras)."""
from __future__ import annotations

import os

import pytest

from host_tools.broker import BrokerError


def need(what: str, e: Exception):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what}: {e} (CI: scripts/setup.sh installs the dev extras)")
    pytest.skip(f"{what}: {e}")


def start_cluster(users: dict[str, str], cloud_users: tuple[str, ...]):
    """A started NatsCluster (the caller closes it); tried again, up to 3 times, when a free port
    it picked was taken by another process before the bind."""
    try:
        import nats  # noqa: F401
    except ImportError as e:
        need("nats-py", e)
    from host_tools.natscluster import NatsCluster
    for attempt in range(3):
        try:
            c = NatsCluster(users=dict(users), cloud_users=cloud_users)
        except BrokerError as e:
            need("nats-server", e)
        try:
            return c.start()
        except BrokerError as e:
            c.close()
            if "address already in use" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")
