"""Who a request runs as: the authenticated principal every decision is attributed to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleet.identity.roles import Permission, Role, role_permissions


class AuthMethod(StrEnum):
    PASSWORD_SESSION = "session"  # a session token got by signing in with a password
    SERVICE_TOKEN = "service-token"
    API_TOKEN = "api-token"  # the deployment-wide FLEET_API__TOKEN
    OIDC = "oidc"


@dataclass(frozen=True)
class Principal:
    principal_id: str  # "user:alice", "token:ci", "oidc:<issuer-sub>", "api-token"
    name: str
    role: str  # a Role label, or "service" for a service token
    method: AuthMethod
    permissions: frozenset[Permission]

    @classmethod
    def for_role(cls, principal_id: str, name: str, role: Role, method: AuthMethod) -> Principal:
        return cls(principal_id, name, role.label, method, role_permissions(role))

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions

    def audit_fields(self) -> dict[str, Any]:
        """What a decision's audit entry records about who made it."""
        return {
            "principal_id": self.principal_id,
            "principal_role": self.role,
            "auth_method": self.method.value,
        }
