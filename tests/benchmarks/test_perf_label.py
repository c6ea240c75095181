"""The label-throughput benchmark end to end, quick: a served model, the labeler, the baseline."""

from __future__ import annotations

from benchmarks.perf import bench_label


def test_label_benchmark_measures_both_prompts_against_the_ideal_and_a_bare_client():
    rows = bench_label.run(quick=True)
    rates = [r for r in rows if r.unit == 'reports/s']
    cpus = [r for r in rows if r.unit == 'ms']
    assert [r.what.split(',')[1].strip() for r in rates] == ['evidence prompt', 'li prompt']
    ideal = bench_label.CONCURRENCY / bench_label.LATENCY_S
    for row in rates:
        assert row.baseline == ideal
        # a rate above the ideal means requests skipped the server's latency (e.g. a cache hit)
        assert 0 < row.ours <= ideal * 1.02, row
        assert row.extra['n'] == 320
    for row in cpus:
        # the labeler does everything the bare client does, and parses and validates on top
        assert row.ours > row.baseline > 0, row
