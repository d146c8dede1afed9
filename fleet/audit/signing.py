"""Ed25519-signed checkpoints of the chain head, and the file they are also kept in.

A checkpoint says "chain C had SIZE entries and the last one hashed HEAD",
signed over the RFC 8785 bytes of::

    {"chain": C, "head": HEAD, "key_id": K, "signed_at": T, "size": SIZE,
     "type": "checkpoint", "v": 1}

so whoever holds only the public key can check it. The private key lives in a
file (created on first use, mode 0600) that the database never sees: someone
who can rewrite the log cannot re-sign it. Each checkpoint is also appended to
a JSON-lines file outside the database, so deleting checkpoints from the
database does not hide a rewrite either.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet.audit.canonical import FORMAT_VERSION, canonical


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain: str
    size: int
    head: str
    signed_at: str
    key_id: str
    signature: str  # hex

    def payload(self) -> bytes:
        return checkpoint_payload(self.chain, self.size, self.head, self.signed_at, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            chain=str(data["chain"]),
            size=int(data["size"]),
            head=str(data["head"]),
            signed_at=str(data["signed_at"]),
            key_id=str(data["key_id"]),
            signature=str(data["signature"]),
        )


def checkpoint_payload(chain: str, size: int, head: str, signed_at: str, key_id: str) -> bytes:
    return canonical(
        {
            "chain": chain,
            "head": head,
            "key_id": key_id,
            "signed_at": signed_at,
            "size": size,
            "type": "checkpoint",
            "v": FORMAT_VERSION,
        }
    )


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_id_of(public_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


def load_public_key(hex_or_pem: str) -> Ed25519PublicKey:
    """A public key as 64 hex characters (as in exports) or a PEM block."""
    text = hex_or_pem.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.public_hex = public_key_hex(self.public_key)
        self.key_id = key_id_of(self.public_hex)

    def sign(self, chain: str, size: int, head: str, signed_at: str) -> Checkpoint:
        payload = checkpoint_payload(chain, size, head, signed_at, self.key_id)
        return Checkpoint(chain, size, head, signed_at, self.key_id, self._key.sign(payload).hex())

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def signature_valid(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    if checkpoint.key_id != key_id_of(public_key_hex(public_key)):
        return False
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return False
    return True


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: when two workers start at once, one creates and both read the same key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


class MissingSigningKey(FileNotFoundError):
    pass


@functools.lru_cache(maxsize=8)
def _load_signer(path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return Signer(key)


def load_signer(path: Path, *, create: bool = True) -> Signer:
    """The signing key at path, created there on first use (unless create is False)."""
    path = path.resolve()
    if not path.exists():
        if not create:
            raise MissingSigningKey(
                f"no audit signing key at {path}; pass the public key to verify with"
            )
        _create_key_file(path)
    return _load_signer(path)


def append_checkpoint_file(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = orjson.dumps(checkpoint.to_dict()) + b"\n"
    # One write on an O_APPEND descriptor: lines from concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint_file(path: Path) -> Iterator[Checkpoint]:
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield Checkpoint.from_dict(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{number}: not a checkpoint line") from None
