# What main.py runs (a board and the unix VM alike): load the config, run the agent. Compiled,
# unlike main.py, which a board runs only as source: ~0.5 KB less on flash.
import asyncio
import sys

import config
from hal import reset


def main():
    try:
        cfg = config.load()
    except config.ConfigError as e:
        # a bad or missing config stops here, clearly: never a boot loop
        print("config error:", e)
        reset.halt(reset.EXIT_CONFIG)
        return
    import board
    board.boot(cfg)  # a board file that is not the one the host checked (its stamp) stops here too
    import store
    from hal import flash
    store.ROOT = flash.mount_fs(cfg["board"])  # state on flash, before anything reads it
    try:
        from net import up  # Wi-Fi, then NTP for TLS (not on sim boards)
        up(cfg)
    except ImportError:
        pass
    if "" not in sys.path:
        sys.path.append("")  # apps may live beside the config
    import agent
    a = agent.Agent(cfg)
    try:
        asyncio.run(a.run(cfg.get("wdt_ms", 10000)))
    except KeyboardInterrupt:
        asyncio.run(a.shutdown())
        sys.exit(0)
    except Exception as e:
        if a.updater and a.updater.how == "trial":  # a trial release that crashes resets: the boot loader rolls it back
            print("trial crashed:", repr(e))
            reset.reset(reset.EXIT_REBOOT)
        raise

