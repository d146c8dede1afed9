"""The local stack harness: the system's real processes (embedded Redis, sandbox,
Celery workers, beat, Flower, the API) started and stopped on one machine.

- `stack.processes`: the supervisor and how each process is started (`fleet up` uses it).
- `stack.local`: a private copy of the whole system on free ports, in a directory
  (the integration tests and the benchmarks).
- `stack.parts`: single pieces of it for tests that need less (a Redis, one worker).
"""
