"""Many commands in flight from asyncio, each with its own timeout; and a late result.

Self-contained: a private Mosquitto and two simulated boards (a gate and a vending cabinet).

    .venv/bin/python examples/async_commands.py
"""
import asyncio
import tempfile
import time
from pathlib import Path

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

CLOUD_USER, CLOUD_PW = "cloud", "cloud-pw"
DEVICES = {"gate-001": "sim-gate", "vend-001": "sim-vending"}


async def run(client: CommandClient, broker: Broker) -> None:
    for dev in DEVICES:
        assert client.sync_time(dev)  # commands other than get_state need a trusted clock
    await asyncio.sleep(0.3)

    # Fan out: every call has its own timeout; results are matched by cti, never by order.
    calls = [client.asend(dev, "get_state", timeout=5) for dev in DEVICES]
    calls += [client.asend(dev, "display", {1: "Hello", 2: 5}, timeout=2) for dev in DEVICES]
    calls.append(client.asend("gate-001", "set_config", {"hb_s": 1}, timeout=2))  # bad_args
    for cmd in await asyncio.gather(*calls):
        print(f"{cmd.device:<9} {cmd.name:<10} {cmd.state.value:<9} {cmd.code}")

    # A late result: the broker hangs (SIGSTOP) and our call gives up. timeout=0.5 bounds each
    # wait: up to 0.5 s for the broker's PUBACK, then up to 0.5 s for the device's result...
    broker.freeze()
    t0 = time.monotonic()
    cmd = await client.asend("gate-001", "get_state", timeout=0.5, ttl=60)
    print(f"while the broker hangs: {cmd.state.value} after {time.monotonic() - t0:.1f} s")
    # ...the broker comes back, delivers the command, the device answers: the answer is kept
    # on the command as `late` and the outcome already reported is not rewritten.
    broker.thaw()
    for _ in range(50):
        if cmd.late is not None:
            break
        await asyncio.sleep(0.1)
    print(f"late result: status {cmd.late and cmd.late['status']} (0 = ok); state still {cmd.state.value}")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="edgepay-ex-"))
    with Broker(users={CLOUD_USER: CLOUD_PW}, cloud_users=(CLOUD_USER,)) as broker:
        registry = Registry(root / "registry.db")
        boards = [provision_sim(broker, registry, root, dev, board_file=bf) for dev, bf in DEVICES.items()]
        try:
            for b in boards:
                b.start()
            for b in boards:
                b.wait_for("online", timeout=30)
            with CommandClient(registry, BrokerSettings("127.0.0.1", broker.cloud_port, CLOUD_USER, CLOUD_PW)) as client:
                asyncio.run(run(client, broker))
        finally:
            for b in boards:
                b.kill()
            registry.close()


if __name__ == "__main__":
    main()
