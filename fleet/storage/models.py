"""Every table, imported in one place so Base.metadata (and Alembic) sees them all.

Domain modules define their tables next to their logic and are listed here.
"""

import fleet.approvals.models, fleet.audit.models  # noqa: E401,F401  (audit log and approvals tables)
from fleet.provisioning.records import JobAgent, ProvisioningJob
from fleet.storage.records import Agent, AgentStatus, SlaContract

__all__ = ["Agent", "AgentStatus", "JobAgent", "ProvisioningJob", "SlaContract"]
