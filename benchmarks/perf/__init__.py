"""Speed and memory benchmarks; `python -m benchmarks.perf` runs them all."""
