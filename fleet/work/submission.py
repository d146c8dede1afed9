"""A task submitted for the fleet: the one input contract of the API and of the
``routing.submit_task`` message, validated here so both refuse the same things the same way."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

# A capability, a fleet, a payer: what a submission takes as a name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
NAME_MAX = 128
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]


class SubmissionError(ValueError):
    """Bad input: ``problems`` names each one by its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _json_number(value: Any) -> Any:
    # A JSON integer may be written 1e3; a string or a boolean is not a number.
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not a string or a boolean")
    return value


class Payer(BaseModel):
    """Who pays: an agent's own budget, a segment (an id prefix) or a task pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["agent", "segment", "pool"]
    id: Name


class TraceContext(BaseModel):
    """The caller's W3C trace context (https://www.w3.org/TR/trace-context/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traceparent: Annotated[str, Field(pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    tracestate: Annotated[str, Field(max_length=512)] = ""

    def carrier(self) -> dict[str, str]:
        """The context to continue; empty for all-zero ids, which W3C says to ignore
        (the task then starts a trace of its own)."""
        if self.traceparent[3:35] == "0" * 32 or self.traceparent[36:52] == "0" * 16:
            return {}
        out = {"traceparent": self.traceparent}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out


class TaskSubmission(BaseModel):
    """What another system sends (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Name
    capabilities: Annotated[list[Name], Field(max_length=32)] = []
    estimated_tokens: Annotated[int, Field(ge=0, le=10_000_000), BeforeValidator(_json_number)]
    payer: Payer
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)]
    fleet: Name | None = None
    # What the agent is asked to do: text, sent as the A2A message's text part.
    input: Annotated[str, Field(max_length=100_000)] = ""
    trace: TraceContext | None = None
    # A sub-agent's task: the task that spawned it (which must exist and be in the
    # same trace); its cost rolls up to the root of the tree.
    parent_task_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None


def parse_submission(data: Any) -> TaskSubmission:
    """The submission, or :class:`SubmissionError` naming every problem by path."""
    try:
        return TaskSubmission.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(body)"
            problems.append(f"{where}: {err['msg']}")
        raise SubmissionError(problems) from None
