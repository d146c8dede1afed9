"""Roles, permissions and the scopes of service tokens.

Roles are ordered (viewer < operator < approver < admin): each holds every
permission of the ones below it. A service token holds no role, only the
permissions it was issued with, so a CI pipeline that submits provisioning
jobs can do exactly that.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Permission(StrEnum):
    APPROVALS_READ = "approvals:read"
    APPROVALS_REQUEST = "approvals:request"
    APPROVALS_DECIDE = "approvals:decide"
    APPROVALS_REVIEW = "approvals:review"
    PROVISIONING_READ = "provisioning:read"
    PROVISIONING_SUBMIT = "provisioning:submit"
    MONITORING_READ = "monitoring:read"
    MONITORING_REPORT = "monitoring:report"
    METRICS_READ = "metrics:read"
    SLA_READ = "sla:read"
    SLA_ACK = "sla:ack"
    SLA_CHECK = "sla:check"
    AUDIT_READ = "audit:read"
    TASKS_READ = "tasks:read"
    FINOPS_READ = "finops:read"
    TASKS_SUBMIT = "tasks:submit"
    CONTROL_OPERATE = "control:operate"  # the kill switch: pause the loop, freeze, ask release
    IDENTITY_ADMIN = "identity:admin"


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    APPROVER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}: one of {', '.join(r.label for r in cls)}"
            ) from None


_GRANTED_FROM: dict[Permission, Role] = {
    Permission.APPROVALS_READ: Role.VIEWER,
    Permission.PROVISIONING_READ: Role.VIEWER,
    Permission.MONITORING_READ: Role.VIEWER,
    Permission.METRICS_READ: Role.VIEWER,
    Permission.SLA_READ: Role.VIEWER,
    Permission.AUDIT_READ: Role.VIEWER,
    Permission.TASKS_READ: Role.VIEWER,
    Permission.FINOPS_READ: Role.VIEWER,
    Permission.APPROVALS_REQUEST: Role.OPERATOR,
    Permission.PROVISIONING_SUBMIT: Role.OPERATOR,
    Permission.MONITORING_REPORT: Role.OPERATOR,
    Permission.SLA_ACK: Role.OPERATOR,
    Permission.SLA_CHECK: Role.OPERATOR,
    Permission.TASKS_SUBMIT: Role.OPERATOR,
    Permission.CONTROL_OPERATE: Role.OPERATOR,
    Permission.APPROVALS_DECIDE: Role.APPROVER,
    Permission.APPROVALS_REVIEW: Role.APPROVER,
    Permission.IDENTITY_ADMIN: Role.ADMIN,
}


def role_permissions(role: Role) -> frozenset[Permission]:
    return frozenset(p for p, lowest in _GRANTED_FROM.items() if role >= lowest)


def parse_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[Permission]:
    """Scopes of a service token: permission names; a token never administers identities."""
    parsed: set[Permission] = set()
    for scope in scopes:
        try:
            permission = Permission(scope.strip())
        except ValueError:
            known = ", ".join(p.value for p in Permission if p is not Permission.IDENTITY_ADMIN)
            raise ValueError(f"unknown scope {scope!r}: one of {known}") from None
        if permission is Permission.IDENTITY_ADMIN:
            raise ValueError("a service token cannot hold identity:admin")
        parsed.add(permission)
    if not parsed:
        raise ValueError("a service token needs at least one scope")
    return frozenset(parsed)
