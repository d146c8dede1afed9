"""Agents' API keys at rest: encrypted with a key from settings, never logged.

Fernet (AES-128-CBC + HMAC-SHA256 from `cryptography`) with its key derived
from FLEET_SECRETS_KEY, so a stolen database alone reveals no gateway key.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretsError(Exception):
    """A stored secret cannot be decrypted (wrong FLEET_SECRETS_KEY, or tampered)."""


class KeyVault:
    def __init__(self, secrets_key: str) -> None:
        derived = hashlib.sha256(b"fleet-commander/agent-keys/" + secrets_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, api_key: str) -> str:
        return self._fernet.encrypt(api_key.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "stored agent key cannot be decrypted with the configured FLEET_SECRETS_KEY"
            ) from None

    def __repr__(self) -> str:
        return "KeyVault(<redacted>)"
