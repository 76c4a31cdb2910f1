"""Benchmarks and chaos runs of botengine.

`python -m benchmarks.run --profile small` measures scale, lateness and memory of real
workers against a bare Celery chain on the same broker (the baseline);
`python -m benchmarks.chaos --profile small` kills workers, restarts Redis, double-starts
bots and injects exchange faults, then checks the engine's invariants. See README.md.
"""
