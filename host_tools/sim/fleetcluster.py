"""The fleet on the 3-node NATS cluster (host_tools/natscluster.py, docs/cluster.md): the site's
broker surface over a running NatsCluster, for World / Fleet (`broker=`).

    with NatsCluster(users={"cloud": pw}, cloud_users=("cloud",)) as c:
        site = ClusterSite(c)
        with Fleet(40, broker=site, cloud=("cloud", pw),
                   world_options={"ingest_workers": 2, "ingest_options": {"ack_wait_s": 2.0}}) as f:
            rep = f.run(events=[(4.0, lambda f: c.kill(1))])

- devices get every node's MQTT port (`brokers`) and try them in turn, as the firmware's
  config "brokers" list: a refused connect moves to the next node at once
  (host_tools/sim/fleetdevice.py);
- the cloud workers get BrokerSettings(engine="nats", servers=every node's NATS address): ingest
  takes the records as competing consumers of the JetStream stream EDGEPAY_UP and acks devices by
  core NATS publish; the session service, the time responder and the site's status subscriber
  speak MQTT 3.1.1 to node `cloud_node`'s listener (one address: they follow that node's restarts);
- provisioning goes to the cluster's auth callout (`add_users`: asked at the next CONNECT).
The site never stops the cluster: its owner does.
"""
from __future__ import annotations

from typing import Any

from host_tools.cloud.mqtt import BrokerSettings

__all__ = ["ClusterSite"]


class ClusterSite:
    def __init__(self, cluster: Any, cloud_node: int = 0, host: str = "127.0.0.1", proxied: tuple[int, ...] = ()):
        """proxied: nodes the devices reach through a FaultyProxy (host_tools/sim/netfault.py) of
        their own, `proxies[i]`, to partition that node from the devices (`proxies[i].partition(s)`)."""
        from host_tools.sim.netfault import FaultyProxy
        self.cluster = cluster
        self.cloud_node = cloud_node
        self.host = host
        self.proxies = {i: FaultyProxy(cluster.nodes[i].mqtt_port, host) for i in proxied}

    @property
    def port(self) -> int:
        return self.cluster.nodes[0].mqtt_port

    @property
    def cloud_port(self) -> int:
        return self.cluster.nodes[self.cloud_node].mqtt_port

    @property
    def brokers(self) -> list[tuple[str, int]]:
        return [(self.host, self.proxies[i].port if i in self.proxies else p)
                for i, p in enumerate(self.cluster.mqtt_ports())]

    def cloud_settings(self, user: str, password: str) -> BrokerSettings:
        # the cluster's engine: "nats" (NatsCluster) or "rabbitmq" (host_tools/rabbitcluster.py,
        # MQTT 3.1.1 only: no servers, and ingest as one plain subscriber, group None)
        engine = getattr(self.cluster, "engine", "nats")
        servers = tuple(self.cluster.nats_urls()) if engine == "nats" else ()
        return BrokerSettings(self.host, self.cloud_port, user, password, engine=engine, servers=servers)

    def add_user(self, name: str, password: str, cloud: bool = False) -> None:
        self.cluster.add_user(name, password, cloud)

    def add_users(self, users: dict[str, str]) -> None:
        self.cluster.add_users(users)

    def close(self) -> None:
        for p in self.proxies.values():
            p.close()
