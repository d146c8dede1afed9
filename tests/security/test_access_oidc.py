"""Optional OIDC: JWTs from the configured issuer, verified against its JWKS.

A local RSA key pair signs the tokens; the JWKS is served over HTTP by this
test on a free loopback port, the way an identity provider publishes it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

ISSUER = "https://idp.example.test"
AUDIENCE = "fleet-commander"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return _key()


@pytest.fixture
def oidc_issuer(signing_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FLEET_IDENTITY__OIDC_ISSUER", ISSUER)
    monkeypatch.setenv(
        "FLEET_IDENTITY__OIDC_JWKS_URL", f"http://127.0.0.1:{server.server_port}/jwks.json"
    )
    try:
        yield ISSUER
    finally:
        server.shutdown()
        server.server_close()


def _token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-123",
        "preferred_username": "olivia",
        "fleet_role": "approver",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def test_a_jwt_of_the_issuer_is_a_principal_with_its_role(
    oidc_issuer: str, signing_key: rsa.RSAPrivateKey, client: TestClient
) -> None:
    me = client.get(
        "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {_token(signing_key)}"}
    )
    assert me.status_code == 200, me.text
    assert me.json()["principal_id"] == "oidc:u-123" and me.json()["role"] == "approver"
    assert me.json()["auth_method"] == "oidc"


@pytest.mark.parametrize(
    "forged",
    [
        "other key",
        "other audience",
        "other issuer",
        "expired",
        "no role",
        "unknown role",
        "unsigned",
    ],
)
def test_a_jwt_that_does_not_verify_is_401(
    oidc_issuer: str, signing_key: rsa.RSAPrivateKey, client: TestClient, forged: str
) -> None:
    token = {
        "other key": lambda: _token(_key()),
        "other audience": lambda: _token(signing_key, aud="someone-else"),
        "other issuer": lambda: _token(signing_key, iss="https://evil.example.test"),
        "expired": lambda: _token(signing_key, exp=int(time.time()) - 120),
        "no role": lambda: _token(signing_key, fleet_role=None),
        "unknown role": lambda: _token(signing_key, fleet_role="root"),
        "unsigned": lambda: jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "x",
                "exp": int(time.time()) + 60,
                "fleet_role": "admin",
            },
            None,  # type: ignore[arg-type]
            algorithm="none",
            headers={"kid": "k1"},
        ),
    }[forged]()
    answer = client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401, forged
