"""Whether we froze an agent's wallet at the gateway, as we last left it.

The gateway freezes and unfreezes wallets but has no read of the flag (its balance
answer does not carry it), so the only account of it is ours: each freeze or unfreeze
that the gateway accepted is noted on the agent's record (``extra["wallet"]``). A wallet
frozen outside Fleet Commander is not known here, and the console says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet.storage.db import write_session
from fleet.storage.records import Agent

KEY = "wallet"


def note_in(session: Session, agent: Agent, *, frozen: bool, by: str, at: datetime) -> None:
    """Note the wallet's state on ``agent`` within the caller's transaction."""
    # A new dict: the JSON column sees a replaced value, not an edit in place.
    agent.extra = {**(agent.extra or {}), KEY: {"frozen": frozen, "by": by, "at": at.isoformat()}}


def note(
    sessions: sessionmaker[Session],
    agent_ids: Iterable[str],
    *,
    frozen: bool,
    by: str,
    at: datetime,
) -> None:
    ids = list(agent_ids)
    if not ids:
        return
    with write_session(sessions) as s:
        for agent in s.scalars(select(Agent).where(Agent.agent_id.in_(ids))):
            note_in(s, agent, frozen=frozen, by=by, at=at)


def state(agent: Agent) -> dict[str, Any] | None:
    """``{"frozen": bool, "by": who, "at": iso}`` as last noted; None: never by us."""
    noted = (agent.extra or {}).get(KEY)
    return noted if isinstance(noted, dict) and isinstance(noted.get("frozen"), bool) else None


__all__ = ["note", "note_in", "state"]
