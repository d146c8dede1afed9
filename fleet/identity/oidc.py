"""Optional: JWTs from an operator's OIDC provider, verified against its JWKS.

The token must be signed by a key in the issuer's JWKS (fetched from
``jwks_url``, cached by PyJWT), carry the configured issuer and audience and
be unexpired; its role comes from one claim (``fleet_role`` by default). A
token without a known role is refused rather than given a default one.
"""

from __future__ import annotations

import logging

import jwt

from fleet.identity.principal import AuthMethod, Principal
from fleet.identity.roles import Role

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]


class OidcVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        role_claim: str = "fleet_role",
        leeway_s: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.leeway_s = leeway_s
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2

    def authenticate(self, token: str) -> Principal | None:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            log.info("OIDC token refused: %s", exc)
            return None
        try:
            role = Role.parse(str(claims.get(self.role_claim, "")))
        except ValueError:
            log.info("OIDC token of %s refused: no known %s claim", claims["sub"], self.role_claim)
            return None
        subject = str(claims["sub"])
        name = str(claims.get("preferred_username") or subject)
        return Principal.for_role(f"oidc:{subject}", name, role, AuthMethod.OIDC)
