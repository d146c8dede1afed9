"""A task submitted for the fleet: the one input contract of the API and of the
``routing.submit_task`` message, validated here so both refuse the same things the same way."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class SubmissionError(ValueError):
    """Bad input: ``problems`` names each one by its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Payer(BaseModel):
    """Who pays: an agent's own budget, a segment (an id prefix) or a task pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["agent", "segment", "pool"]
    id: Name


class TraceContext(BaseModel):
    """The caller's W3C trace context (https://www.w3.org/TR/trace-context/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traceparent: Annotated[str, Field(max_length=55)]
    tracestate: Annotated[str, Field(max_length=512)] = ""

    @field_validator("traceparent")
    @classmethod
    def _w3c(cls, value: str) -> str:
        if not _TRACEPARENT.match(value) or value.startswith("ff"):
            raise ValueError("must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>")
        if value[3:35] == "0" * 32 or value[36:52] == "0" * 16:
            raise ValueError("trace id and parent id must not be all zeros")
        return value

    def carrier(self) -> dict[str, str]:
        out = {"traceparent": self.traceparent}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out


class TaskSubmission(BaseModel):
    """What another system sends (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Name
    capabilities: Annotated[list[Name], Field(max_length=32)] = []
    estimated_tokens: Annotated[int, Field(ge=0, le=10_000_000)]
    payer: Payer
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)]
    fleet: Name | None = None
    # What the agent is asked to do: text, sent as the A2A message's text part.
    input: Annotated[str, Field(max_length=100_000)] = ""
    trace: TraceContext | None = None


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
