"""Control state that must survive a Redis restart, kept in the database.

The provisioning freeze is the only such flag today (pauses and traffic weights
already live on the agents' rows): a freeze set by the emergency alert rule or an
operator holds until it is lifted, whatever restarts in between.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from fleet.durability.models import ProvisioningFreeze


def is_provisioning_frozen(sessions: sessionmaker[Session], fleet: str) -> bool:
    return provisioning_freeze_reason(sessions, fleet) is not None


def provisioning_freeze_reason(sessions: sessionmaker[Session], fleet: str) -> str | None:
    with sessions() as s:
        return s.scalar(select(ProvisioningFreeze.reason).where(ProvisioningFreeze.fleet == fleet))


def freeze_provisioning(session: Session, fleet: str, reason: str, now: datetime) -> None:
    """Freeze, or re-state the reason of a freeze that holds (inside the caller's transaction)."""
    row = session.get(ProvisioningFreeze, fleet)
    if row is None:
        session.add(ProvisioningFreeze(fleet=fleet, reason=reason or "frozen", frozen_at=now))
    else:
        row.reason = reason or "frozen"


def lift_provisioning_freeze(session: Session, fleet: str, only_prefix: str | None = None) -> bool:
    """Lift the fleet's freeze; with ``only_prefix``, only one whose reason starts with it.
    True when a freeze was lifted."""
    statement = delete(ProvisioningFreeze).where(ProvisioningFreeze.fleet == fleet)
    if only_prefix is not None:
        statement = statement.where(ProvisioningFreeze.reason.startswith(only_prefix))
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]
