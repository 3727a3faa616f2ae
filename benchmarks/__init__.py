"""Speed and throughput benchmarks: ``python -m benchmarks.NAME``; the last output line is JSON."""
