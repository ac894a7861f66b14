"""bench/device_heap.py refuses figures that cannot be true instead of printing them (it once
printed live_kb -43.88 and a minimum budget its search could not fail to reach)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import device_heap  # noqa: E402

KB = 1024


def test_plausible_figures_pass():
    assert device_heap.impossible(24 * KB, 23 * KB, 40, 32) is None


def test_live_data_at_or_below_zero_is_refused():
    assert "live data <= 0" in device_heap.impossible(-44 * KB, 20 * KB, 40, 32)
    assert "live data <= 0" in device_heap.impossible(24 * KB, 0, 40, 32)


def test_a_budget_below_the_data_it_held_is_refused():
    assert "below the live data" in device_heap.impossible(24 * KB, 23 * KB, 16, 12)
    assert "below the live data" in device_heap.impossible(10 * KB, 20 * KB, 16, 12)  # boot held more


def test_a_search_that_never_failed_is_refused():
    assert "no budget down to" in device_heap.impossible(6 * KB, 5 * KB, device_heap.LEVELS[-1], None)
