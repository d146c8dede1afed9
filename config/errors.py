"""Turn pydantic/YAML failures into one line a person can act on."""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(Exception):
    """A setting or a YAML file is invalid; the message is one line."""


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def describe_validation_error(
    exc: ValidationError, *, source: str, env_prefix: str | None = None
) -> str:
    """First problem first, then a count of the others, all on one line."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        field = _location(loc)
        where = field
        if env_prefix is not None and loc:
            env_name = env_prefix + "__".join(str(p).upper() for p in loc)
            where = f"{env_name} ({field})"
        got = err.get("input")
        got_text = "" if isinstance(got, dict) or got is None else f", got {got!r}"
        problems.append(f"{where}: {err['msg'].lower()}{got_text}")
    head = f"invalid configuration in {source}: {problems[0]}"
    if len(problems) > 1:
        head += f" (and {len(problems) - 1} more: " + "; ".join(problems[1:]) + ")"
    return head
