"""``python -m sandbox``: run the gateway sandbox in the foreground.

Defaults come from ``config.settings`` (``FLEET_SANDBOX__*``, ``FLEET_GATEWAY__*``
and the policy file); every flag overrides its setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from sandbox.behaviour import ProfileMix
from sandbox.server import SandboxOptions, run


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _faults(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_bytes() if text.startswith("@") else text.encode()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _mix(text: str) -> str:
    try:
        ProfileMix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_args(argv: list[str] | None = None) -> SandboxOptions:
    from config import ConfigError, get_settings

    try:
        defaults = SandboxOptions.from_settings(get_settings())
    except ConfigError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    p = argparse.ArgumentParser(
        prog="python -m sandbox", description="Local agent-commerce gateway sandbox."
    )
    a = p.add_argument
    a("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    a(
        "--port",
        type=int,
        default=defaults.port,
        help="port; 0 picks a free one (default %(default)s)",
    )
    a(
        "--agents",
        type=int,
        default=defaults.agents,
        help="agents to pre-seed (default %(default)s)",
    )
    a(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed for profiles, ids and fault draws (default %(default)s)",
    )
    a(
        "--seed-prefix",
        default=defaults.seed_prefix,
        help="id prefix of pre-seeded agents (default %(default)s)",
    )
    a(
        "--latency-ms",
        type=_non_negative,
        default=defaults.latency_ms,
        help="mean added latency (default %(default)s)",
    )
    a(
        "--latency-jitter-ms",
        type=_non_negative,
        default=defaults.latency_jitter_ms,
        help="uniform ± jitter (default %(default)s)",
    )
    a(
        "--error-rate",
        type=_fraction,
        default=defaults.error_rate,
        help="share of calls failing with 500 (default %(default)s)",
    )
    a(
        "--timeout-rate",
        type=_fraction,
        default=defaults.timeout_rate,
        help="share of calls held then dropped (default %(default)s)",
    )
    a(
        "--timeout-s",
        type=_non_negative,
        default=defaults.timeout_s,
        help="how long a timed-out call is held (default %(default)s)",
    )
    a("--admin-key", default=defaults.admin_key, help="the admin-scope API key")
    a("--data-dir", default=defaults.data_dir, help="where sandbox.db lives (default %(default)s)")
    a("--memory", action="store_true", help="keep state in memory only (no sandbox.db)")
    a(
        "--key-grace-s",
        type=_non_negative,
        default=defaults.key_grace_s,
        help="how long a rotated-out key keeps working (default %(default)s)",
    )
    a(
        "--sse-lifetime-s",
        type=_non_negative,
        default=defaults.sse_lifetime_s,
        help="when the event stream closes (default %(default)s)",
    )
    a(
        "--sse-heartbeat-s",
        type=_non_negative,
        default=defaults.sse_heartbeat_s,
        help="seconds between ': heartbeat' comments (default %(default)s)",
    )
    a(
        "--sse-poll-s",
        type=_non_negative,
        default=defaults.sse_poll_s,
        help="how often the stream reads the bus, as the real one (0: on every publish) "
        "(default %(default)s)",
    )
    a(
        "--sse-batch",
        type=_positive_int,
        default=defaults.sse_batch,
        help="events the stream reads per poll, as the real one (default %(default)s)",
    )
    a(
        "--events-retention-s",
        type=_non_negative,
        default=defaults.events_retention_s,
        help="how long the bus keeps an event (default %(default)s)",
    )
    a(
        "--heartbeat-interval-s",
        type=_non_negative,
        default=defaults.heartbeat_interval_s,
        help="simulated agents publish a signed heartbeat this often; 0: only on "
        "/_sandbox/tick and bursts (default: the policy's, %(default)s)",
    )
    a(
        "--keep-alive-after-error",
        dest="close_after_error",
        action="store_false",
        help="keep connections open after error answers (the real gateway closes some)",
    )
    a(
        "--profile-mix",
        type=_mix,
        default=None,
        help="behaviour mix, e.g. healthy=80,flaky=8,degrading=5,cost_runaway=4,dead=3",
    )
    a(
        "--faults",
        type=_faults,
        default=None,
        help="a fault document (JSON, or @file) applied at start",
    )
    a("--access-log", action="store_true", help="log every request to stderr (slow)")
    args = p.parse_args(argv)
    values = vars(args)
    return SandboxOptions(**{**defaults.__dict__, **values})


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    try:
        run(options)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(
            f"sandbox: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
