"""Every table, imported in one place so Base.metadata (and Alembic) sees them all.

Domain modules define their tables next to their logic and are listed here.
"""

import fleet.approvals.models  # noqa: E401,F401  (audit log and approvals tables)
import fleet.audit.models
import fleet.budgets.models  # noqa: E402,F401  (spend ledger, spending pauses, raised limits)
import fleet.control.models  # noqa: E402,F401  (control-loop pause, fleet freezes)
import fleet.durability.models  # noqa: E402,F401  (provisioning freezes, dead letters)
import fleet.identity.models  # noqa: E402,F401  (accounts, service tokens, sign-in sessions)
import fleet.monitoring.models  # noqa: E402,F401  (hourly agent history, fleet sweeps, alerts)
import fleet.scaling.models  # noqa: E402,F401  (autoscaling decisions, segment modes)
import fleet.sla.models  # noqa: E402,F401  (SLA episodes, escalations, disputes, burn-rate alerts)
import fleet.work.records  # noqa: E402,F401  (work tasks: routing choice, outcome, cost)
from fleet.provisioning.records import JobAgent, ProvisioningJob
from fleet.storage.records import Agent, AgentStatus, SlaContract

__all__ = ["Agent", "AgentStatus", "JobAgent", "ProvisioningJob", "SlaContract"]
