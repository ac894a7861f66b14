"""The cloud's broker connection (host_tools/cloud/mqtt.py): one BrokerSettings for every worker,
a raw sink for a consumer that queues everything itself (ingest, `edgepay watch`), and one publish
path (CommandClient enqueues under its seq lock and waits with CloudMQTT's wait)."""
import dataclasses
import os
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.registry import Registry
from host_tools.protocol import MAX_MESSAGE, ProtocolError
from tests.agentkit import CLOUD
from tests.conftest import USERS


def test_settings_are_one_frozen_object():
    s = BrokerSettings("127.0.0.1", 1884, *CLOUD)
    assert (s.client_id, s.ca_file, s.mqtt5, s.engine, s.v5) == (None, None, None, "mosquitto", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    c = CloudMQTT(dataclasses.replace(s, client_id="svc-1"))
    assert c.settings.client_id == "svc-1" and (c.host, c.port) == ("127.0.0.1", 1884)


def test_the_engine_decides_the_mqtt_version_and_work_sharing():
    """Nothing hard-codes MQTT 5 or `$share`: each cloud part asks its BrokerSettings. NATS and
    RabbitMQ speak 3.1.1 only and grant a `$share/...` subscription, then deliver nothing: a group
    on them is refused, clearly, before any worker starts deaf."""
    from host_tools.cloud.ingest import IngestWorker
    from host_tools.cloud.ledger_open import open_ledger
    from host_tools.cloud.mqtt import BrokerUnsupported
    m = BrokerSettings("h", 1, *CLOUD)
    assert m.work_share("ingest", "v1/dev/+/up/rec") == "$share/ingest/v1/dev/+/up/rec"
    assert m.work_share(None, "v1/dev/+/up/rec") == "v1/dev/+/up/rec"
    assert CloudMQTT(m).client.protocol == paho.MQTTv5
    for engine in ("nats", "rabbitmq"):
        s = BrokerSettings("h", 1, *CLOUD, engine=engine)
        assert not s.v5 and CloudMQTT(s).client.protocol == paho.MQTTv311
        assert s.work_share(None, "v1/dev/+/up/rec") == "v1/dev/+/up/rec"
        with pytest.raises(BrokerUnsupported, match="no MQTT shared subscriptions"):
            s.work_share("ingest", "v1/dev/+/up/rec")
        reg, led = Registry(), open_ledger(":memory:")
        with pytest.raises(BrokerUnsupported):
            IngestWorker(reg, led, s, group="ingest")
        assert IngestWorker(reg, led, s, group=None).subscription == "v1/dev/+/up/rec"
        led.close()
        reg.close()
    # NATS shares a group's work on its own durable stream: a JetStream consumer, given the
    # cluster's NATS addresses (tests/test_nats_ingest.py runs it); RabbitMQ still refuses
    reg, led = Registry(), open_ledger(":memory:")
    js = BrokerSettings("h", 1, *CLOUD, engine="nats", servers=("nats://h:4222",))
    assert IngestWorker(reg, led, js, group="ingest").subscription == "jetstream:EDGEPAY_UP/ingest:v1.dev.*.up.rec"
    assert IngestWorker(reg, led, js, group=None).subscription == "v1/dev/+/up/rec"
    with pytest.raises(BrokerUnsupported):
        IngestWorker(reg, led, BrokerSettings("h", 1, *CLOUD, engine="rabbitmq", servers=("x",)), group="ingest")
    led.close()
    reg.close()
    assert BrokerSettings("h", 1, *CLOUD, engine="nats", mqtt5=True).v5   # an explicit choice wins
    with pytest.raises(ValueError, match="unknown broker engine"):
        BrokerSettings("h", 1, *CLOUD, engine="kafka")


def test_sink_gets_every_message_raw_and_handlers_none(broker):
    got, handled = [], []
    c = CloudMQTT(BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD), sink=lambda t, p, r: got.append((t, len(p), r)))
    c.subscribe("v1/dev/+/up/#", lambda t, p: handled.append(t), qos=1)  # never called: the sink takes all
    c.connect()
    time.sleep(0.3)
    dev = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev1")
    dev.username_pw_set("dev1", USERS["dev1"])
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    try:
        # unfiltered: even a payload over the message bound reaches the sink (ingest refuses it itself)
        for n in (10, MAX_MESSAGE + 1):
            dev.publish("v1/dev/dev1/up/evt", b"z" * n, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [("v1/dev/dev1/up/evt", 10, False), ("v1/dev/dev1/up/evt", MAX_MESSAGE + 1, False)]
        assert handled == [] and c.oversize == 0
    finally:
        dev.loop_stop()
        dev.disconnect()
        c.close()


def test_oversize_command_is_refused_before_it_is_pending():
    reg = Registry()
    reg.add("gate-1", os.urandom(32), "gate", "sim-gate")
    client = CommandClient(reg, BrokerSettings("127.0.0.1", 1, *CLOUD))  # never connected: nothing may go out
    with pytest.raises(ProtocolError, match="too_large"):
        client.submit("gate-1", "set_config", {"x": "z" * (MAX_MESSAGE + 1)})
    assert client._pending == {}
    reg.close()
