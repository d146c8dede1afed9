"""Accounts, service tokens and sessions in the database; bearer tokens to principals.

Bearer tokens by prefix::

    fcs_<secret>              a session, got by signing in (stored as its SHA-256)
    fct_<token_id>_<secret>   a service token (stored as an argon2id hash of the secret)

Anything else is compared with the deployment-wide API token (if one is
configured) or, when an OIDC issuer is configured, verified as its JWT.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet.clock import Clock
from fleet.identity import hashing
from fleet.identity.models import ServiceToken, SignInSession, User
from fleet.identity.principal import AuthMethod, Principal
from fleet.identity.roles import Permission, Role, parse_scopes

if TYPE_CHECKING:
    from config.settings import Settings
    from fleet.identity.oidc import OidcVerifier

SESSION_PREFIX = "fcs_"
SERVICE_PREFIX = "fct_"
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")


class IdentityError(Exception):
    """Refused: the message names what is wrong."""


class SignInFailed(IdentityError):
    pass


@dataclass(frozen=True)
class UserView:
    username: str
    role: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenView:
    token_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedSession:
    token: str
    expires_at: datetime
    principal: Principal


def _check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise IdentityError(
            f"username {username!r}: 2-64 characters, lower-case letters, digits, '.', '_' or '-', "
            "beginning with a letter"
        )
    return username


def _check_password(password: str) -> str:
    if len(password) < hashing.MIN_PASSWORD_LENGTH:
        raise IdentityError(f"a password needs at least {hashing.MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise IdentityError("a password has at most 1024 characters")
    return password


def _user_principal(user: User, method: AuthMethod) -> Principal:
    return Principal.for_role(f"user:{user.username}", user.username, Role.parse(user.role), method)


class Identities:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        *,
        session_ttl_s: float = 8 * 3600,
        api_token: str | None = None,
        api_token_role: Role = Role.ADMIN,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.oidc = oidc
        self.sessions = sessions
        self.clock = clock
        self.session_ttl = timedelta(seconds=session_ttl_s)
        self.api_token = api_token
        self.api_token_role = api_token_role
        # Verifying a password that belongs to nobody costs the same as one that does.
        self._decoy_hash = hashing.hash_secret(hashing.new_secret())

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], clock: Clock
    ) -> Identities:
        ident = settings.identity
        oidc = None
        if ident.oidc_issuer is not None and ident.oidc_jwks_url is not None:
            from fleet.identity.oidc import OidcVerifier

            oidc = OidcVerifier(
                issuer=ident.oidc_issuer,
                jwks_url=str(ident.oidc_jwks_url),
                audience=ident.oidc_audience,
                role_claim=ident.oidc_role_claim,
            )
        token = settings.api.token
        return cls(
            sessions,
            clock,
            session_ttl_s=ident.session_ttl_s,
            api_token=token.get_secret_value() if token is not None else None,
            api_token_role=Role.parse(ident.api_token_role),
            oidc=oidc,
        )

    # ------------------------------------------------------------ accounts

    def add_user(self, username: str, role: Role, password: str) -> UserView:
        _check_username(username)
        _check_password(password)
        now = self.clock.now()
        with self.sessions.begin() as session:
            if session.get(User, username) is not None:
                raise IdentityError(f"user {username!r} exists already")
            user = User(
                username=username,
                role=role.label,
                password_hash=hashing.hash_secret(password),
                disabled=False,
                created_at=now,
                password_changed_at=now,
            )
            session.add(user)
        return UserView(username, role.label, False, now)

    def list_users(self) -> list[UserView]:
        with self.sessions() as session:
            rows = session.scalars(select(User).order_by(User.username)).all()
            return [UserView(u.username, u.role, u.disabled, u.created_at) for u in rows]

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        with self.sessions.begin() as session:
            user = session.get(User, username)
            if user is None:
                raise IdentityError(f"no user {username!r}")
            user.disabled = disabled
            if disabled:
                self._revoke_sessions(session, username)

    def set_password(self, username: str, password: str) -> None:
        _check_password(password)
        with self.sessions.begin() as session:
            user = session.get(User, username)
            if user is None:
                raise IdentityError(f"no user {username!r}")
            user.password_hash = hashing.hash_secret(password)
            user.password_changed_at = self.clock.now()
            self._revoke_sessions(session, username)

    def _revoke_sessions(self, session: Session, username: str) -> None:
        session.execute(
            update(SignInSession)
            .where(SignInSession.username == username, SignInSession.revoked_at.is_(None))
            .values(revoked_at=self.clock.now())
        )

    # ------------------------------------------------------------ service tokens

    def add_token(
        self, name: str, scopes: list[str], *, ttl_s: float | None = None
    ) -> tuple[str, TokenView]:
        """A new service token; its secret is in the returned string only, never stored."""
        _check_username(name)
        permissions = parse_scopes(scopes)
        token_id = uuid.uuid4().hex
        secret = hashing.new_secret()
        now = self.clock.now()
        expires = now + timedelta(seconds=ttl_s) if ttl_s else None
        with self.sessions.begin() as session:
            if session.scalars(select(ServiceToken).where(ServiceToken.name == name)).first():
                raise IdentityError(f"a service token named {name!r} exists already")
            session.add(
                ServiceToken(
                    token_id=token_id,
                    name=name,
                    scopes=sorted(p.value for p in permissions),
                    secret_hash=hashing.hash_secret(secret),
                    created_at=now,
                    expires_at=expires,
                )
            )
        view = TokenView(token_id, name, tuple(sorted(permissions)), now, expires, None)
        return f"{SERVICE_PREFIX}{token_id}_{secret}", view

    def list_tokens(self) -> list[TokenView]:
        with self.sessions() as session:
            rows = session.scalars(select(ServiceToken).order_by(ServiceToken.name)).all()
            return [
                TokenView(
                    t.token_id, t.name, tuple(t.scopes), t.created_at, t.expires_at, t.revoked_at
                )
                for t in rows
            ]

    def revoke_token(self, name: str) -> None:
        with self.sessions.begin() as session:
            token = session.scalars(select(ServiceToken).where(ServiceToken.name == name)).first()
            if token is None:
                raise IdentityError(f"no service token {name!r}")
            token.revoked_at = token.revoked_at or self.clock.now()

    # ------------------------------------------------------------ signing in

    def sign_in(self, username: str, password: str) -> IssuedSession:
        """A session token for a valid password of an enabled account; SignInFailed otherwise."""
        with self.sessions() as session:
            user = session.get(User, username)
            stored = user.password_hash if user is not None else self._decoy_hash
            ok = hashing.verify_secret(stored, password)
            if user is None or not ok or user.disabled:
                raise SignInFailed("wrong username or password, or the account is disabled")
            principal = _user_principal(user, AuthMethod.PASSWORD_SESSION)
        token = SESSION_PREFIX + hashing.new_secret()
        now = self.clock.now()
        expires = now + self.session_ttl
        with self.sessions.begin() as session:
            session.add(
                SignInSession(
                    token_digest=hashing.digest(token),
                    username=username,
                    created_at=now,
                    expires_at=expires,
                )
            )
        return IssuedSession(token, expires, principal)

    def sign_out(self, token: str) -> None:
        with self.sessions.begin() as session:
            row = session.get(SignInSession, hashing.digest(token))
            if row is not None and row.revoked_at is None:
                row.revoked_at = self.clock.now()

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None (unknown, expired, revoked)."""
        if token.startswith(SESSION_PREFIX):
            return self._session_principal(token)
        if token.startswith(SERVICE_PREFIX):
            return self._service_principal(token)
        if self.api_token and secrets.compare_digest(token.encode(), self.api_token.encode()):
            return Principal.for_role(
                "api-token", "api-token", self.api_token_role, AuthMethod.API_TOKEN
            )
        if self.oidc is not None and self.oidc.looks_like_jwt(token):
            return self.oidc.authenticate(token)
        return None

    def _session_principal(self, token: str) -> Principal | None:
        now = self.clock.now()
        with self.sessions() as session:
            row = session.get(SignInSession, hashing.digest(token))
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None
            user = session.get(User, row.username)
            if user is None or user.disabled:
                return None
            return _user_principal(user, AuthMethod.PASSWORD_SESSION)

    def _service_principal(self, token: str) -> Principal | None:
        token_id, _, secret = token.removeprefix(SERVICE_PREFIX).partition("_")
        if not token_id or not secret:
            return None
        now = self.clock.now()
        with self.sessions() as session:
            row = session.get(ServiceToken, token_id)
            if row is None or row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if not hashing.verify_secret(row.secret_hash, secret):
                return None
            return Principal(
                f"token:{row.name}",
                row.name,
                "service",
                AuthMethod.SERVICE_TOKEN,
                frozenset(Permission(s) for s in row.scopes),
            )
