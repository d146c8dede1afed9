"""A local double of the GreenHelix A2A Commerce Gateway 1.4.8: its REST surface, with real state.

Start it with ``python -m sandbox`` (or ``fleet sandbox``); ``--help`` lists the
flags, whose defaults come from ``config.settings`` (``FLEET_SANDBOX__*``,
``FLEET_GATEWAY__ADMIN_KEY``, ``FLEET_DATA_DIR``)::

    python -m sandbox --host 127.0.0.1 --port 8765 --agents 10000 --seed 42 \\
        --latency-ms 50 --error-rate 0 --timeout-rate 0 --data-dir var

When ready it prints ``sandbox listening on http://HOST:PORT``.

Surface
-------
Every route in :data:`sandbox.routes.ROUTES` (identity, billing, payments,
disputes, marketplace, messaging, events, trust), plus ``GET /v1/health``,
``POST /v1/execute`` (410, as the real one) and ``GET /v1/events/stream``
(SSE as the real one: ``Last-Event-ID`` over ``since_id``, at most 100 events
per 1 s poll, ``: heartbeat`` every 5 s, closed after ``--sse-lifetime-s``; the
bus keeps events ``--events-retention-s``, 24 h). Keys, tiers, the admin scope, ownership, per-agent
sliding hours (free 100 … enterprise 100,000, recorded before the check),
deposit caps, budget caps, freeze, idempotency keys, the 300 s rotation grace
(``--key-grace-s``), costs and ``X-Charged``, RFC 9457 problems and the
habit of closing a keep-alive connection after some errors
(``--keep-alive-after-error`` turns it off) follow the real gateway; see
``/work/shared/spec/real-gateway.md`` in the project's notes.

State lives in memory and is written behind to ``<data-dir>/sandbox.db``
(SQLite, WAL) twice a second and at shutdown, so a restart keeps the fleet;
``--memory`` keeps none. Seeded agents (``--agents N``, ``POST /_sandbox/seed``)
carry a behaviour profile (healthy, flaky, degrading, cost_runaway, dead) that
produces their metrics and spending, and publishes signed heartbeats at
``--heartbeat-interval-s`` (dead agents are silent; see :mod:`sandbox.agents`).
The operator's control API is under ``/_sandbox/`` (see :mod:`sandbox.control`),
faults under ``/_sandbox/faults`` (see :mod:`sandbox.faults`).

Plain ``GET`` requests of the REST routes (no body, a path that needs no
decoding) are framed and answered by a lean HTTP/1.1 front
(:mod:`sandbox.fastpath`) with the same handlers and headers; the first other
request on a connection hands the connection to aiohttp for good. On two
shared cores a balance read costs the server about 130-150 µs of CPU, against
about 270 µs through aiohttp.
"""
