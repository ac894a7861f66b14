"""Send signed commands to a device and follow each to its outcome (sync API).

Self-contained: starts a private Mosquitto (host_tools.broker.Broker) and one simulated parking
gate (boards/sim-gate.json) on the MicroPython VM, then talks to it with CommandClient.

    .venv/bin/python examples/send_command.py
"""
import tempfile
from pathlib import Path

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker
from host_tools.cloud.commands import CommandClient, State
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

CLOUD_USER, CLOUD_PW = "cloud", "cloud-pw"


def show(cmd):
    print(f"{cmd.name:<10} {cmd.state.value:<9} code={cmd.code} data={cmd.data} "
          f"seq={cmd.seq} cti={cmd.cti.hex()}")


def main():
    root = Path(tempfile.mkdtemp(prefix="edgepay-ex-"))
    with Broker(users={CLOUD_USER: CLOUD_PW}, cloud_users=(CLOUD_USER,)) as broker:
        registry = Registry(root / "registry.db")
        # registry entry + broker user + config.json on the board's "flash"
        board = provision_sim(broker, registry, root, "gate-001", board_file="sim-gate")
        board.start()
        try:
            board.wait_for("online", timeout=30)
            # cloud workers use the broker's cloud listener, never the device listener
            with CommandClient(registry, BrokerSettings("127.0.0.1", broker.cloud_port, CLOUD_USER, CLOUD_PW)) as client:
                # read-only: allowed before the device has a trusted clock
                show(client.send("gate-001", "get_state", timeout=5))

                # anything else needs time first: REJECTED with code clock_untrusted
                show(client.send("gate-001", "set_config", {"hb_s": 60}, timeout=5))
                assert client.sync_time("gate-001")        # it asks with a nonce, the client answers signed
                board.wait_for("time set", timeout=5)
                cmd = client.send("gate-001", "set_config", {"hb_s": 60}, timeout=5, ttl=30)
                show(cmd)
                assert cmd.state is State.SUCCEEDED
                print("   history:", " -> ".join(s.value for s, _ in cmd.history))

                # the device's handler refuses bad arguments: REJECTED with code bad_args
                show(client.send("gate-001", "set_config", {"hb_s": 1}, timeout=5))
                # a command the device does not know: REJECTED with code unsupported
                show(client.send("gate-001", "frobnicate", timeout=5))

                # nobody answers: TIMED_OUT after the call's own timeout (EXPIRED once exp passed)
                board.kill()
                show(client.send("gate-001", "get_state", timeout=1))
        finally:
            board.kill()
            registry.close()


if __name__ == "__main__":
    main()
