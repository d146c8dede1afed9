"""Credentials: argon2id for passwords and service tokens, SHA-256 for session tokens.

Session tokens are 256 random bits that live hours: a memory-hard KDF adds
nothing against guessing them and would cost tens of milliseconds per request,
so they are stored as their SHA-256. Passwords (chosen by people) and service
tokens (long-lived) are stored as argon2id hashes.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's RFC 9106 "low memory" profile: 64 MiB, 3 passes.
_hasher = PasswordHasher()

MIN_PASSWORD_LENGTH = 12


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(stored: str, secret: str) -> bool:
    try:
        return _hasher.verify(stored, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generated_password() -> str:
    return secrets.token_urlsafe(18)
