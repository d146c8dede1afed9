"""People and services: accounts with roles, scoped service tokens, sessions, OIDC.

Every API call runs as a :class:`Principal`; decisions take their actor from it.
"""

from fleet.identity.principal import AuthMethod, Principal
from fleet.identity.roles import Permission, Role, parse_scopes, role_permissions
from fleet.identity.service import (
    Identities,
    IdentityError,
    IssuedSession,
    SignInFailed,
    TokenView,
    UserView,
)

__all__ = [
    "AuthMethod",
    "Identities",
    "IdentityError",
    "IssuedSession",
    "Permission",
    "Principal",
    "Role",
    "SignInFailed",
    "TokenView",
    "UserView",
    "parse_scopes",
    "role_permissions",
]
