"""Benchmarks: workloads run against a private stack (`stack.local`) on free ports.

Launched by `fleet bench …` (cli/commands/bench.py); no product module imports
this package. Every benchmark's last output line is one JSON object holding its
figures, the limit measured in the same run (the same gateway calls or writes
made by the simplest direct client at the same concurrency) as ``limit_s``, and
``ratio``, the measured time over the limit: absolute times differ between
machines, ratios much less. `python -m benchmarks.loadtest` measures a running
sandbox on its own.
"""
