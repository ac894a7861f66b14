"""The fee rules of protocol/FEES.md, twice: firmware/apps/fees.py on the MicroPython VM and
host_tools/cloud/fees.py on CPython.

1. Every worked example of FEES.md §8 (read from the file itself) through both implementations.
2. Hypothesis properties on random coherent tariffs and sessions: the VM and the host give the same
   result or the same error (code and field) for every case; fees are monotone non-decreasing in
   duration; a 24 h block never costs more than the daily cap; a rental never exceeds its purchase
   price and conversion never goes back; zero within the grace window; the lost-ticket price is a
   floor; vending totals equal the sum of their lines.
3. Invalid tariffs, times and baskets (mutations of valid ones): both refuse with the same code
   and field, in the order FEES.md defines.

One VM process per module answers every case over a line-per-case pipe (tests/vm/fees_run.py), in
batches; the board-sized 64K heap is collected between cases. Deterministic (derandomize=True, no
example database). EDGEPAY_FEES_N sets the examples per property (default 150).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.cloud import fees as host
from tests.vm import FIRMWARE, ROOT, VM_SCRIPTS, micropython, run_vm

N = int(os.environ.get("EDGEPAY_FEES_N", "150"))
FEES_MD = ROOT / "protocol" / "FEES.md"
DAY = 86400
MAX_MONEY = 2**30 - 1
MAX_DURATION = 2**30 - 1
MAX_UINT = 2**63 - 1
MAX_FREE_MIN = MAX_DURATION // 60
DIVISORS = [d for d in range(1, DAY + 1) if DAY % d == 0]
BOUNDS = {1: (0, MAX_UINT), 3: (0, MAX_FREE_MIN), 4: (1, MAX_DURATION), 5: (0, MAX_MONEY),
          6: (0, MAX_MONEY), 7: (0, MAX_MONEY), 9: (1, MAX_MONEY)}  # FEES.md §1, inclusive


def fee_settings(n: int = N) -> settings:
    return settings(max_examples=max(n, 1), derandomize=True, database=None, deadline=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- both implementations, one call shape ----------------------------------------------------

def enc(v: Any) -> Any:
    """JSON form for the VM: a map is {"$m": [[key, value], ...]} (tariff keys are ints)."""
    if isinstance(v, dict):
        return {"$m": [[enc(k), enc(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    return v


def norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    return v


def host_call(f: str, tariff: Any, *args: Any) -> dict:
    try:
        if f == "validate":
            host.validate(tariff)
            return {"r": "ok"}
        return {"r": norm(getattr(host, f)(tariff, *args))}
    except host.FeeError as e:
        return {"e": [e.code, e.field]}
    except Exception as e:  # noqa: BLE001 - any other exception is a bug the test reports
        return {"x": f"{type(e).__name__}: {e}"}


def line(f: str, tariff: Any, *args: Any) -> str:
    # raw UTF-8, not \u escapes: MicroPython's json does not join an escaped surrogate pair
    return json.dumps({"f": f, "t": enc(tariff), "a": enc(list(args))}, ensure_ascii=False) + "\n"


class VM:
    """One MicroPython process running tests/vm/fees_run.py; batch() sends lines, reads answers."""

    def __init__(self) -> None:
        self.cases = 0
        self._start()

    def _start(self) -> None:
        env = dict(os.environ)
        env["MICROPYPATH"] = ":".join([str(FIRMWARE), str(VM_SCRIPTS), ".frozen"])
        self.proc = subprocess.Popen(
            [micropython(), "-X", "heapsize=64K", str(VM_SCRIPTS / "fees_run.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env,
            bufsize=1)

    def batch(self, calls: list[tuple]) -> list[dict]:
        try:
            return self._batch(calls)
        except BaseException:
            self.proc.kill()  # out of step with the pipe: a fresh process for the next example
            self.proc.wait()
            self._start()
            raise

    def _batch(self, calls: list[tuple]) -> list[dict]:
        out = []
        for i in range(0, len(calls), 32):  # bounded so neither pipe can fill up
            chunk = calls[i:i + 32]
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write("".join(line(*c) for c in chunk))
            self.proc.stdin.flush()
            for _ in chunk:
                ans = self.proc.stdout.readline()
                assert ans, f"VM died (exit {self.proc.poll()})"
                out.append(json.loads(ans))
        self.cases += len(calls)
        return out

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def vm():
    v = VM()
    yield v
    print(f"\nfees VM answered {v.cases} cases in one process")
    v.close()


def both(vm: VM, calls: list[tuple]) -> list[dict]:
    """Run calls on both; assert they agree case by case; return the (common) results."""
    fw = vm.batch(calls)
    for call, got in zip(calls, fw):
        want = host_call(*call)
        assert "x" not in want and "x" not in got, (call, want, got)
        assert got == want, f"firmware {got} != host {want} for {call}"
    return fw


# --- 1. the worked examples of FEES.md §8 ----------------------------------------------------

def _examples() -> list[tuple[str, Any, str, list, Any]]:
    text = FEES_MD.read_text()
    names: dict[str, Any] = {"__builtins__": {}, "True": True, "False": False, "range": range}
    for m in re.finditer(r"^(T\d+) = (\{.*\})$", text, re.M):
        names[m.group(1)] = eval(m.group(2), dict(names))  # our own document
    rows = []
    for m in re.finditer(r"^\| ([PRVX]\d+) \| (.+?) \| (\w+)\((.*?)\) \| (.+?) \|", text, re.M):
        ident, tariff, f, args, result = m.groups()
        t = eval(tariff, dict(names))
        a = eval(f"[{args}]", dict(names))
        if result == "ok":
            want: Any = {"r": "ok"}
        elif result.startswith("error "):
            _, code, field = result.split()
            want = {"e": [code, int(field)]}
        else:
            want = {"r": norm(eval(result, dict(names)))}
        rows.append((ident, t, f, a, want))
    return rows


EXAMPLES = _examples()


def test_examples_parsed():
    kinds = {e[0][0] for e in EXAMPLES}
    assert len(EXAMPLES) >= 60 and kinds == {"P", "R", "V", "X"}
    assert len({e[0] for e in EXAMPLES}) == len(EXAMPLES)


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_host(ex):
    ident, t, f, a, want = ex
    assert host_call(f, t, *a) == want


@pytest.fixture(scope="module")
def vm_examples():
    proc = run_vm("fees_run.py", stdin="".join(line(f, t, *a) for _, t, f, a, _ in EXAMPLES))
    out = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(out) == len(EXAMPLES)
    return {e[0]: o for e, o in zip(EXAMPLES, out)}


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_firmware(vm_examples, ex):
    assert vm_examples[ex[0]] == ex[4]


def test_firmware_compiles_and_has_no_floats():
    """Integer maths only: no float literal, no true division, no float(); mpy-cross compiles it."""
    import io
    import sys
    import tokenize
    from pathlib import Path
    for name in ("fees.py", "__init__.py"):
        path = FIRMWARE / "apps" / name
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.NUMBER:
                assert tok.string.isdigit() or tok.string.startswith(("0x", "0b")), tok
            assert not (tok.type == tokenize.OP and tok.string in ("/", "/=")), tok
            assert not (tok.type == tokenize.NAME and tok.string == "float"), tok
        subprocess.run([str(Path(sys.executable).parent / "mpy-cross"), "-o", os.devnull, str(path)],
                       check=True)


# --- strategies ------------------------------------------------------------------------------

@st.composite
def money(draw, lo: int = 0, hi: int = MAX_MONEY) -> int:
    # drawn step by step: strategies built from drawn values inside st.one_of made hypothesis
    # report inconsistent data generation on long runs
    mode = draw(st.integers(0, 3))
    if mode == 0:
        return draw(st.integers(lo, min(hi, lo + 1000)))
    if mode == 1:
        return draw(st.integers(lo, hi))
    return lo if mode == 2 else hi


skus = st.one_of(
    st.sampled_from(["A1", "B2", "C3", "D4", "coke", "water-0.5"]),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=32).filter(
        lambda s: len(s.encode()) <= 32),
)


@st.composite
def tariffs(draw, rate: bool | None = None, prices: bool | None = None) -> dict:
    t: dict[Any, Any] = {1: draw(st.one_of(st.integers(0, 100), st.just(MAX_UINT))),
                         2: draw(st.from_regex(r"[A-Z]{3}", fullmatch=True))}
    if draw(st.booleans()) if prices is None else prices:
        items = draw(st.lists(skus, max_size=64, unique=True))
        t[8] = [[s, draw(money())] for s in items]
    if draw(st.integers(0, 9)) > 0 if rate is None else rate:
        cap = draw(st.booleans())
        if cap or draw(st.booleans()):
            ps = draw(st.sampled_from(DIVISORS))
        else:
            ps = draw(st.one_of(st.integers(1, 100_000), st.integers(1, MAX_DURATION)))
        price = draw(money())
        t[4], t[5] = ps, price
        if cap:
            t[6] = draw(money(price, min(MAX_MONEY, price * 100 + 10)) if draw(st.booleans())
                        else money(price))
        if draw(st.booleans()):
            lo = max(price, 1)
            t[9] = draw(money(lo, min(MAX_MONEY, lo * 300)) if draw(st.booleans()) else money(lo))
    if draw(st.booleans()):
        t[3] = draw(st.one_of(st.integers(0, 120), st.integers(0, MAX_FREE_MIN)))
    if draw(st.booleans()):
        t[7] = draw(money())
    if draw(st.integers(0, 4)) == 0:
        t[draw(st.sampled_from([0, 10, 23, -1, "x", "cur"]))] = draw(
            st.one_of(st.none(), st.text(max_size=4), st.floats(allow_nan=False, allow_infinity=False), st.integers()))
    return t


def boundaries(t: dict) -> list[int]:
    """Durations where something happens: grace edge, period and block edges, the maximum."""
    pts = {0, 1, MAX_DURATION, MAX_DURATION - 1}
    g = 60 * t.get(3, 0)
    pts |= {g - 1, g, g + 1}
    ps = t.get(4)
    if ps:
        for k in (1, 2, 3, 47, 48, 49):
            pts |= {k * ps - 1, k * ps, k * ps + 1}
    for k in (1, 2, 5, 30):
        pts |= {k * DAY - 1, k * DAY, k * DAY + 1, g + k * DAY}
    return sorted(p for p in pts if 0 <= p <= MAX_DURATION)


@st.composite
def sessions(draw, t: dict) -> tuple[int, list[int]]:
    t0 = draw(st.one_of(st.just(0), st.integers(0, 4_000_000_000), st.just(MAX_UINT - MAX_DURATION)))
    edge = boundaries(t)
    ds = draw(st.lists(st.one_of(st.sampled_from(edge), st.integers(0, 4 * DAY),
                                 st.integers(0, MAX_DURATION)), min_size=1, max_size=12))
    return t0, sorted(set(ds))


# --- 2. agreement and properties on valid tariffs ----------------------------------------------

@fee_settings()
@given(st.data())
def test_time_fees_agree_and_hold_properties(vm, data):
    t = data.draw(tariffs(rate=True, prices=False))
    t0, ds = data.draw(sessions(t))
    lost_known = 7 in t
    calls = []
    for d in ds:
        calls += [("parking", t, t0, t0 + d, False), ("rental", t, t0, t0 + d)]
        if lost_known:
            calls.append(("parking", t, t0, t0 + d, True))
    res = iter(r["r"] for r in both(vm, calls))

    grace, cap, q = 60 * t.get(3, 0), t.get(6), t.get(9)
    prev_p = prev_l = prev_r = 0
    prev_conv = False
    for d in ds:
        p, (r, conv) = next(res), next(res)
        assert p >= prev_p and r >= prev_r, "monotone in duration"
        assert conv >= prev_conv, "a purchase never turns back into a rental"
        if d <= grace:
            assert p == 0 and r == 0 and not conv
        if cap is not None:
            assert p <= -(-d // DAY) * cap, "each started 24 h block costs at most the cap"
        if q is None:
            assert r == p and not conv, "the same time fee serves both"
        else:
            assert r == min(p, q) and conv == (p >= q) and r <= q
        if lost_known:
            lp = next(res)
            assert lp == max(p, t[7]) and lp >= prev_l
            prev_l = lp
        assert p < 2**63
        prev_p, prev_r, prev_conv = p, r, conv


@fee_settings()
@given(st.data())
def test_vending_agrees_and_totals(vm, data):
    t = data.draw(tariffs(prices=True))
    known = [s for s, _ in t[8]]
    entry = st.tuples(st.sampled_from(known) if known else skus,
                      st.one_of(st.integers(0, 3), st.integers(0, 65535), st.just(0)))
    baskets = data.draw(st.lists(st.lists(entry.map(list), max_size=32), min_size=1, max_size=6))
    price = dict((s, p) for s, p in t[8])
    for basket, out in zip(baskets, both(vm, [("vending", t, b) for b in baskets])):
        if not known and basket:
            assert out == {"e": ["unknown_sku", 0]}
            continue
        amount, lines = out["r"]
        assert amount == sum(q * p for _, q, p in lines), "total is the sum of the lines"
        assert [s for s, _, _ in lines] == list(dict.fromkeys(s for s, q in basket if q))
        for s, q, p in lines:
            assert q > 0 and p == price[s] and q == sum(n for k, n in basket if k == s)
        assert amount < 2**51


# --- 3. invalid input: the same refusal from both ------------------------------------------------

junk = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
    st.integers(-2**70, 2**70), st.sampled_from([-1, 0, 1, MAX_MONEY, MAX_MONEY + 1, MAX_DURATION + 1,
                                                 MAX_FREE_MIN + 1, MAX_UINT, MAX_UINT + 1, 7 * 3600,
                                                 "EUR", "eur", "EU", "EURO", "", []]),
    st.lists(st.lists(st.one_of(st.text(max_size=3), st.integers(-1, 3)), max_size=3), max_size=3),
    st.dictionaries(st.integers(0, 3), st.integers(0, 3), max_size=2),
)


@st.composite
def broken_tariffs(draw) -> Any:
    t = draw(tariffs())

    def num(k: int) -> int:  # the field's value if a mutation has not already broken it
        v = t.get(k)
        return v if type(v) is int and v >= 0 else 0

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 10))
        if kind == 0:
            return draw(junk)                                   # not a map at all
        if kind <= 3:
            t[draw(st.integers(1, 9))] = draw(junk)             # a field of the wrong type / range
        elif kind == 4:
            t.pop(draw(st.integers(1, 9)), None)                # a field missing (maybe required)
        elif kind == 5 and 5 in t:                              # incoherent caps
            t[6] = draw(st.integers(0, max(num(5) - 1, 0)))
        elif kind == 6 and 4 in t:
            t[4] = draw(st.sampled_from([7 * 3600, 86401, 1000, 7, MAX_DURATION]))
            t.setdefault(6, max(num(5), 1))
        elif kind == 7 and 5 in t:
            t[9] = draw(st.integers(0, num(5)))
        elif kind == 8:                                         # a broken price list
            p = t.get(8)
            p = list(p) if isinstance(p, list) and p and isinstance(p[0], list) and p[0] else [["A1", 1]]
            p.append(draw(st.sampled_from([list(p[0]), ["", 1], ["x" * 33, 1], ["é" * 17, 1], ["A", 1, 2],
                                           ["Z", -1], ["Z", True], ("T", 1), [5, 1], "A"])))
            if draw(st.booleans()):
                p = p + [["p%d" % i, 1] for i in range(64)]
            t[8] = p
        elif kind == 9:                                         # a value at or just past a limit
            k = draw(st.sampled_from(sorted(BOUNDS)))
            lo, hi = BOUNDS[k]
            t[k] = draw(st.sampled_from([lo - 1, lo, hi, hi + 1]))
        else:
            t[draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9]))] = draw(
                st.sampled_from([True, False, 1.0, -1, None, "1"]))
    return t


bad_times = st.one_of(st.integers(-5, 5), st.integers(0, 2**64), st.booleans(), st.none(),
                      st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([MAX_UINT, MAX_UINT + 1, -1]))


@fee_settings(2 * N)
@given(st.data())
def test_invalid_refused_alike(vm, data):
    t = data.draw(broken_tariffs())
    t0 = data.draw(st.one_of(st.integers(0, 10**6), bad_times))
    t1 = data.draw(st.one_of(st.integers(0, 10**6), bad_times, st.just(t0)))
    basket = data.draw(st.one_of(
        st.lists(st.lists(st.one_of(skus, st.integers(-1, 3), junk), max_size=3), max_size=4),
        st.lists(st.tuples(st.sampled_from(["A1", "B2", "p1"]), st.integers(0, 3)), max_size=40),
        junk))
    lost = data.draw(st.booleans())
    out = both(vm, [("validate", t), ("parking", t, t0, t1, lost), ("rental", t, t0, t1),
                    ("vending", t, basket)])
    # one validation for every function: the tariff refusal, if any, comes first and is the same
    if "e" in out[0]:
        assert out[0]["e"][0] == "bad_tariff" and all(o == out[0] for o in out)


@fee_settings()
@given(st.data())
def test_bad_times_and_baskets_on_valid_tariffs(vm, data):
    t = data.draw(tariffs())
    t0, t1 = data.draw(bad_times), data.draw(st.one_of(bad_times, st.integers(0, 2**40)))
    entry = st.one_of(st.lists(st.one_of(skus, st.integers(-1, 70000), junk), max_size=3),
                      st.tuples(skus, st.integers(-1, 70000)))
    basket = data.draw(st.one_of(st.lists(entry, max_size=34), junk))
    out = both(vm, [("parking", t, t0, t1, data.draw(st.booleans())), ("rental", t, t0, t1),
                    ("vending", t, basket)])
    for o in out[:2]:
        assert "e" not in o or o["e"][0] in ("bad_time", "no_rate", "no_lost_price")
