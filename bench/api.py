"""The HTTP API's cost (issue 13 §5), measured on the real service (`edgepay serve`'s Service:
uvicorn, token auth, the audit log) against a board on the MicroPython VM and a real Mosquitto.

- ratio_p50 / ratio_p99: one POST /v1/devices/D/commands that waits for the final state, token
  included, on a kept-alive HTTP/1.1 connection (as a client session keeps one), against the same
  command through the SDK (CommandClient.send) in the same run, interleaved in blocks so load that
  comes and goes lands on both. The service runs as `edgepay serve` in its own process, as it is
  deployed: a client is never in the server's process. Goal: ratio_p50 <= 1.5.
- inproc_ratio_p50: the same with the service in this process (uvicorn's thread, the client and
  the SDK's paho thread then take turns on one GIL): what the figure was before, kept beside it.
- list_p95_ms (SQLite) and pg_list_p95_ms (PostgreSQL, if this machine has it): the console's
  device list, one page of 100, with 10,000 devices registered (EDGEPAY_API_DEVICES), at random
  offsets (`after=`) and filtered by kind. Goal <= 100 ms each.

    .venv/bin/python bench/api.py       # last line: one JSON object
"""
import http.client
import json
import os
import random
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from _kit import CLOUD, broker, pct, workdir
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from host_tools.service.config import load
from host_tools.service.run import Service
from host_tools.sim.provision import provision_sim

N = int(os.environ.get("EDGEPAY_API_N", "600"))
BLOCK = 50
DEVICES = int(os.environ.get("EDGEPAY_API_DEVICES", "10000"))
LISTS = int(os.environ.get("EDGEPAY_API_LISTS", "300"))
TOKEN = "bench-token-" + os.urandom(8).hex()


_conns: dict = {}


def call(url, method="GET", body=None):
    """One request on a kept-alive connection (as an API client's session keeps one)."""
    u = urllib.parse.urlsplit(url)
    c = _conns.get(u.netloc)
    if c is None:
        c = _conns[u.netloc] = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, u.path + ("?" + u.query if u.query else ""), None if body is None else json.dumps(body),
              {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"{method} {url}: {r.status} {data[:200]!r}")
    return json.loads(data)


def config(d, b, registry, ledger):
    (d / "edgepay.toml").write_text(f"""
[broker]
host = "127.0.0.1"
port = {b.cloud_port}
user = "{CLOUD[0]}"
password_env = "BENCH_MQTT_PW"

[store]
registry = "{registry}"
ledger = "{ledger}"

[http]
host = "127.0.0.1"
port = 0
token_env = "BENCH_API_TOKEN"
""")
    return d / "edgepay.toml"


def fill(registry_url, n):
    reg = Registry(registry_url)
    kinds = ("gate", "vending", "rental")
    rows = [(f"site{i // 500:02d}-dev{i:05d}", os.urandom(32), kinds[i % 3], "sim-x") for i in range(n)]
    for i in range(0, n, 2000):
        reg.add_many(rows[i:i + 2000])
    reg.close()
    return [r[0] for r in rows]


def list_p95(url, ids):
    ms = []
    for _ in range(LISTS):
        after = random.choice(ids)
        q = f"{url}/v1/devices?limit=100&after={after}" + ("&kind=vending" if random.random() < 0.5 else "")
        t0 = time.perf_counter()
        call(q)
        ms.append((time.perf_counter() - t0) * 1000)
    return round(pct(ms, 95), 2), round(pct(ms, 50), 2)


def ratios(url, client, label=""):
    """(http p50, sdk p50, ratio p50, ratio p99): the POST that waits against CommandClient.send."""
    http_ms, sdk_ms = [], []
    body = {"name": "display", "args": {"1": "x"}, "timeout": 10}
    for i in range(20):  # warm both paths
        call(f"{url}/v1/devices/api-1/commands", "POST", body)
        client.send("api-1", "display", {1: "x"}, timeout=10)
    while len(http_ms) < N:
        for _ in range(BLOCK):
            t0 = time.perf_counter()
            r = call(f"{url}/v1/devices/api-1/commands", "POST", body)
            http_ms.append((time.perf_counter() - t0) * 1000)
            assert r["state"] == "SUCCEEDED", r
        for _ in range(BLOCK):
            t0 = time.perf_counter()
            c = client.send("api-1", "display", {1: "x"}, timeout=10)
            sdk_ms.append((time.perf_counter() - t0) * 1000)
            assert c.ok, c.state
    return (round(pct(http_ms, 50), 3), round(pct(sdk_ms, 50), 3),
            round(pct(http_ms, 50) / pct(sdk_ms, 50), 2), round(pct(http_ms, 99) / pct(sdk_ms, 99), 2))


def serve_process(cfg: Path):
    """`edgepay serve --config cfg` in its own process: (process, its URL) once it says ready."""
    p = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
    assert p.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("ready "):
            return p, line.split()[1]
        if not line and p.poll() is not None:
            break
    p.kill()
    raise RuntimeError("edgepay serve did not get ready")


def main():
    os.environ["BENCH_MQTT_PW"] = CLOUD[1]
    os.environ["BENCH_API_TOKEN"] = TOKEN
    out = {"n": N, "devices": DEVICES}
    b = broker()
    d = workdir()
    registry = d / "registry.db"
    svc = board = proc = client = None
    try:
        reg = Registry(registry)
        board = provision_sim(b, reg, d, "api-1", settings={"hb_s": 60, "keepalive_s": 30}).start()
        reg.close()
        cfg = config(d, b, registry, d / "ledger.db")
        svc = Service(load(cfg)).start()
        board.wait_for("online", 20)
        assert svc.client.sync_time("api-1")
        board.wait_for("time set", 5)
        _, _, out["inproc_ratio_p50"], _ = ratios(svc.url, svc.client)
        svc.stop()
        svc = None
        _conns.clear()
        proc, url = serve_process(cfg)   # it answers the board's time requests from here on
        client = CommandClient(Registry(registry), BrokerSettings("127.0.0.1", b.cloud_port, *CLOUD)).connect()
        h50, s50, r50, r99 = ratios(url, client)
        out.update(http_p50_ms=h50, sdk_p50_ms=s50, ratio_p50=r50, ratio_p99=r99)
        ids = fill(str(registry), DEVICES)
        out["list_p95_ms"], out["list_p50_ms"] = list_p95(url, ids)
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if svc is not None:
            svc.stop()
        if board is not None:
            board.kill()
        b.close()
    out["pg_list_p95_ms"] = pg_list(d)
    out["goals"] = {"ratio_p50": 1.5, "list_p95_ms": 100, "pg_list_p95_ms": 100}
    print(json.dumps(out))


def pg_list(d):
    """The same list on PostgreSQL (the API's registry there), or None without PostgreSQL."""
    try:
        from host_tools.pgserver import PgServer
        pg = PgServer().start()
    except Exception as e:  # noqa: BLE001 - no PostgreSQL on this machine: say so, not fail
        print(f"api: no PostgreSQL ({e}); pg_list_p95_ms left out", file=sys.stderr)
        return None
    b = broker()
    svc = None
    try:
        url = pg.new_database("api")
        ids = fill(url, DEVICES)
        svc = Service(load(config(d, b, url, url)), only=["api"]).start()
        return list_p95(svc.url, ids)[0]
    finally:
        if svc is not None:
            svc.stop()
        b.close()
        pg.close()


if __name__ == "__main__":
    main()
