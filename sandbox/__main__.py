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
    a("--admin-key", default=defaults.admin_key, help="the fleet-admin API key")
    a(
        "--tool-path",
        default=defaults.tool_path,
        help="path tool calls are POSTed to (default %(default)s)",
    )
    a(
        "--key-overlap-s",
        type=_non_negative,
        default=defaults.key_overlap_s,
        help="how long a rotated-out key keeps working (default %(default)s)",
    )
    a(
        "--treasury-wallet",
        default=defaults.treasury_wallet,
        help="the fleet treasury wallet id (default %(default)s)",
    )
    a(
        "--profile-mix",
        type=_mix,
        default=None,
        help="behaviour mix, e.g. healthy=80,flaky=8,degrading=5,cost_runaway=4,dead=3",
    )
    a(
        "--rate-limit",
        type=int,
        default=defaults.rate_limit,
        help="calls per window check_rate_limit reports (default %(default)s)",
    )
    a(
        "--rate-window-s",
        type=float,
        default=defaults.rate_window_s,
        help="rate-limit window (default %(default)s)",
    )
    a(
        "--faults",
        type=_faults,
        default=None,
        help="a fault document (JSON, or @file) applied at start",
    )
    a("--access-log", action="store_true", help="log every request to stderr (slow)")
    args = p.parse_args(argv)
    if not args.tool_path.startswith("/"):
        p.error("--tool-path must start with '/'")
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
