"""Ed25519-signed checkpoints of the chain head, chained to each other, and the key that signs.

A checkpoint says "chain C had SIZE entries and the last one hashed HEAD; it
is checkpoint number COUNTER, and the one before it hashed PREV", signed over
the RFC 8785 bytes of::

    {"chain": C, "counter": N, "head": HEAD, "key_id": K, "prev_checkpoint": P,
     "signed_at": T, "size": SIZE, "type": "checkpoint", "v": 2}

(``P`` is :meth:`Checkpoint.digest` of checkpoint N-1, ``""`` for the first),
so whoever holds only the public key can check each one, and removing one
leaves a gap in the counters. Checkpoints written before counters existed
(``counter`` 0) were signed over the version 1 payload, without ``counter``
and ``prev_checkpoint``, and are still checked as such.

The private key is made once by ``fleet audit init-key`` (mode 0400) and only
read afterwards: a worker that finds none fails, it never makes its own, and
verification trusts only the public key pinned in configuration
(``FLEET_AUDIT__PUBLIC_KEY``), never whatever key sits next to the database.
Each checkpoint is also appended to a JSON-lines file outside the database
and published to the witness (:mod:`fleet.audit.witness`).
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

CHECKPOINT_VERSION = 2  # version 1: no counter, no link to the previous checkpoint


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain: str
    size: int
    head: str
    signed_at: str
    key_id: str
    signature: str  # hex
    counter: int = 0  # 1, 2, 3… in signing order; 0 for a version 1 checkpoint
    prev_checkpoint: str = ""  # digest() of checkpoint counter-1; "" for the first

    def payload(self) -> bytes:
        return checkpoint_payload(
            self.chain,
            self.size,
            self.head,
            self.signed_at,
            self.key_id,
            counter=self.counter,
            prev_checkpoint=self.prev_checkpoint,
        )

    def digest(self) -> str:
        """What the next checkpoint's prev_checkpoint says: SHA-256 of this one, signature
        included."""
        return hashlib.sha256(canonical(self.to_dict())).hexdigest()

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
            counter=int(data.get("counter") or 0),
            prev_checkpoint=str(data.get("prev_checkpoint") or ""),
        )


def checkpoint_payload(
    chain: str,
    size: int,
    head: str,
    signed_at: str,
    key_id: str,
    *,
    counter: int = 0,
    prev_checkpoint: str = "",
) -> bytes:
    fields: dict[str, Any] = {
        "chain": chain,
        "head": head,
        "key_id": key_id,
        "signed_at": signed_at,
        "size": size,
        "type": "checkpoint",
        "v": FORMAT_VERSION,
    }
    if counter:
        fields.update(counter=counter, prev_checkpoint=prev_checkpoint, v=CHECKPOINT_VERSION)
    return canonical(fields)


@dataclass(frozen=True, slots=True)
class WitnessedHead:
    """A signed "the chain had SIZE entries ending in HEAD" sent to the witness after an
    append: not a checkpoint (no counter), so the witness can see past the last one."""

    chain: str
    size: int
    head: str
    signed_at: str
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return head_payload(self.chain, self.size, self.head, self.signed_at, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WitnessedHead:
        return cls(
            chain=str(data["chain"]),
            size=int(data["size"]),
            head=str(data["head"]),
            signed_at=str(data["signed_at"]),
            key_id=str(data["key_id"]),
            signature=str(data["signature"]),
        )


def head_payload(chain: str, size: int, head: str, signed_at: str, key_id: str) -> bytes:
    return canonical(
        {
            "chain": chain,
            "head": head,
            "key_id": key_id,
            "signed_at": signed_at,
            "size": size,
            "type": "head",
            "v": CHECKPOINT_VERSION,
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

    def sign(
        self,
        chain: str,
        size: int,
        head: str,
        signed_at: str,
        *,
        after: Checkpoint | None,
    ) -> Checkpoint:
        """Checkpoint size/head, next in line after ``after`` (None: the first one)."""
        counter = (after.counter if after is not None else 0) + 1
        link = after.digest() if after is not None else ""
        payload = checkpoint_payload(
            chain, size, head, signed_at, self.key_id, counter=counter, prev_checkpoint=link
        )
        return Checkpoint(
            chain, size, head, signed_at, self.key_id, self._key.sign(payload).hex(), counter, link
        )

    def sign_head(self, chain: str, size: int, head: str, signed_at: str) -> WitnessedHead:
        payload = head_payload(chain, size, head, signed_at, self.key_id)
        return WitnessedHead(
            chain, size, head, signed_at, self.key_id, self._key.sign(payload).hex()
        )

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def signature_valid(checkpoint: Checkpoint | WitnessedHead, public_key: Ed25519PublicKey) -> bool:
    if checkpoint.key_id != key_id_of(public_key_hex(public_key)):
        return False
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return False
    return True


class MissingSigningKey(FileNotFoundError):
    pass


class SigningKeyExists(FileExistsError):
    pass


class UnpinnedKey(LookupError):
    """No public key is pinned in configuration, so no signature can be trusted."""


PIN_HINT = (
    "pin the audit public key: set FLEET_AUDIT__PUBLIC_KEY to the hex key "
    "`fleet audit init-key` printed (or `fleet audit public-key` prints), "
    "or pass --public-key"
)


def init_signing_key(path: Path) -> Signer:
    """Create the signing key at path (mode 0400); refuse if there is one already."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: a second init (or two at once) never replaces the key that signed the log.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        raise SigningKeyExists(
            f"an audit signing key already exists at {path}; it is never replaced "
            "(`fleet audit public-key` prints its public key)"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return load_signer(path)


@functools.lru_cache(maxsize=8)
def _load_signer(path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return Signer(key)


def load_signer(path: Path) -> Signer:
    """The signing key at path. Never created here: `fleet audit init-key` makes it once."""
    path = path.resolve()
    if not path.is_file():  # a bind mount of a file not made yet shows up as a directory
        raise MissingSigningKey(
            f"no audit signing key at {path}: run `fleet audit init-key` once (and pin the "
            "public key it prints in FLEET_AUDIT__PUBLIC_KEY); workers never create one"
        )
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
