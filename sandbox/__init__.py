"""A local sandbox of the agent-commerce gateway: a real HTTP server with real state.

Start it with ``python -m sandbox`` (or ``fleet sandbox``); ``--help`` lists the
flags, whose defaults come from ``config.settings.SandboxSettings``::

    python -m sandbox --host 127.0.0.1 --port 8765 --agents 1000 --seed 42 \\
        --latency-ms 50 --latency-jitter-ms 10 --error-rate 0 --timeout-rate 0

Other flags: ``--timeout-s``, ``--admin-key``, ``--tool-path``, ``--key-overlap-s``,
``--treasury-wallet``, ``--seed-prefix``, ``--profile-mix``
(``healthy=80,flaky=8,degrading=5,cost_runaway=4,dead=3``), ``--rate-limit``,
``--rate-window-s``, ``--faults`` (a fault document, JSON or ``@file``),
``--access-log``. ``--port 0`` picks a free port. When ready it prints one line,
``sandbox listening on http://HOST:PORT``; SIGINT/SIGTERM stop it cleanly.
In code: ``sandbox.server.run(SandboxOptions(...))`` or
``sandbox.server.create_app(options)`` for any aiohttp runner.

Protocol
--------
``POST {tool_path}`` (default ``/v1``) with ``{"tool": NAME, "input": {...}}`` and
``Authorization: Bearer <key>``. The admin key works for everything; an agent's
own key (from ``register_agent``) works for calls about that agent and for
public reads (reputation, marketplace, rate limit), and gets 403 elsewhere.
Answers: 200 + JSON object, or ``{"error": {"code", "message", "field"?}}`` with
400 (bad input; ``field`` names it), 401, 403, 404 (unknown tool, agent, wallet,
SLA, dispute), 409 (duplicate agent or wallet, ``insufficient_funds``,
``wallet_frozen``, dispute already resolved), 429 + ``Retry-After``, 5xx.
Money is a decimal string everywhere; a JSON number where money is expected
is a 400. All 29 tools of the spec are implemented; see :mod:`sandbox.tools`
for the choices the spec leaves open (overdraft is 409; a frozen wallet can
only be drained to a treasury; ids containing "treasury" are created on first
transfer; ``create_sla`` supersedes; ``resolve_dispute`` moves no money).

Simulated fleet
---------------
Every agent gets a behaviour profile from a hash of (seed, agent_id): healthy,
flaky, degrading, cost_runaway or dead (80/8/5/4/3 % by default), plus
``idle`` (no spending) when pinned. Metrics, reputation, burn rate and SLA
compliance are computed from the profile and the agent's age on the sandbox
clock, which is real time plus whatever the admin API advanced it by. Cost
runaway agents drain their wallets; degrading agents cross the standard
SLA within 15 min – 2 h of sandbox time. Violation episodes are found when an
SLA is evaluated (compliance check, violations query, report), with their start
and end located by bisection over the behaviour, so ``duration_minutes`` does
not depend on how often anyone looked.

Admin API (admin key required; never faulted, not counted as tool calls)
----------------------------------------------------------------------
=====================================  ===========================================================
``GET /_sandbox/health``               status, sandbox clock, live agents, uptime
``GET /_sandbox/counters``             ``{"total", "in_flight", "tools": {tool: n},
                                       "statuses": {tool: {"200": n, "dropped": n, ...}},
                                       "agents": {agent_id: {tool: n}}}``; ``?agents=0`` omits
                                       agents, ``?agent_prefix=P`` filters them. Every request
                                       counts, faulted ones included; bad JSON counts as
                                       ``<invalid>``, unknown tools as ``<unknown>``.
``POST /_sandbox/counters/reset``      zero the counters
``GET /_sandbox/faults``               the fault config (see :mod:`sandbox.faults`)
``PUT /_sandbox/faults``               merge a fault document; 400 naming the bad field
``DELETE /_sandbox/faults``            clear every fault (latency settings stay)
``GET /_sandbox/clock``                ``{"now", "epoch", "offset_s"}``
``POST /_sandbox/clock/advance``       ``{"seconds": n}``: move the sandbox clock forward
``POST /_sandbox/seed``                ``{"agents": N, "prefix": "sim", "tier"?, "balance"?,
                                       "sla_template"?, "profile"?, "services"?}``: fully
                                       provisioned agents ``{prefix}-{i:04d}-{8hex}``; answers
                                       ``seeded``, ``first``, ``last``, ``agent_ids`` (≤ 20,000)
``GET /_sandbox/state``                counts: agents live/deregistered, wallets active/frozen,
                                       ``orphans`` (wallets whose agent is deregistered, with a
                                       balance or not frozen), identities without wallet, ...
``GET /_sandbox/agents/{id}``          everything about one agent (keys, wallet, SLA,
                                       violations, transactions, audits, messages); also a
                                       deregistered one
``PUT /_sandbox/agents/{id}``          ``{"profile": "degrading"}``: pin a behaviour from now
``GET /_sandbox/messages``             ``?to=&from=&limit=``: messages sent with send_message
``POST /_sandbox/reset``               wipe state and counters, restore start-up faults;
                                       ``{"agents": N}`` re-seeds
``GET /_sandbox/tools``                tool and profile names
=====================================  ===========================================================

Fault injection (decided before the tool runs, so a failed call changes
nothing; drawn from an RNG seeded by ``--seed``): latency (mean ± jitter, per
tool extra), 5xx rate (global and per tool), timeouts (held ``timeout_s``, then
dropped or 504), 429 bursts (``rate_limit_next``) and rates with
``Retry-After``, per-tool outage windows (503 + Retry-After), connection drops,
the ``kill`` switch, and ``drop_after_commit_rate`` (the call succeeds but the
answer is lost). :class:`sandbox.control.SandboxControl` wraps all of this for
tests; ``python -m benchmarks.loadtest`` measures a running sandbox.
"""
