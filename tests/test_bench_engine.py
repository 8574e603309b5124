"""`quietstar bench engine` takes each ratio within a repeat, so drift between repeats cancels."""

from __future__ import annotations

from benchmarks.offline_throughput import alternate, paired


def test_runs_alternate_and_ratios_pair_within_a_repeat():
    order: list[str] = []
    speed = iter([1.0, 2.0, 2.0, 4.0, 4.0, 8.0])  # the machine slows down 2x every repeat

    def run(name: str):
        def timed() -> float:
            order.append(name)
            return next(speed)

        return timed

    a, b = alternate(3, run("a"), run("b"))
    assert order == ["a", "b"] * 3
    assert (a, b) == ([1.0, 2.0, 4.0], [2.0, 4.0, 8.0])
    value, spread = paired(lambda x, y: y / x, a, b)
    assert value == 2.0 and spread == "range 2.00–2.00"
    # the ratio of medians is the same here, but not once one repeat is an outlier
    value, _ = paired(lambda x, y: y / x, [1.0, 2.0, 10.0], [2.0, 4.0, 11.0])
    assert value == 2.0
    assert paired(lambda x: x, [3.0]) == (3.0, "one repeat")
