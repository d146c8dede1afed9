"""First start of a local or demo stack: the keys and the witness a deployment brings itself.

A deployment runs ``fleet audit init-key`` once, pins the public key it prints
(``FLEET_AUDIT__PUBLIC_KEY``), sets ``FLEET_SECRETS_KEY`` to a key from
``fleet keys new-vault-key`` and points ``FLEET_AUDIT__WITNESS_DIR`` at an
append-only directory on another mount. A local stack (environment ``local``
or ``test``: `fleet up --demo`, the tests, the benchmarks) does the same for
itself on first start, so it needs nothing but Python:

- the signing key, made once, its public key written beside it to
  ``audit/pinned-public-key``; later starts pin that file's key, so a key
  swapped in afterwards signs nothing verify accepts;
- a random Fernet key in ``secrets/vault.key`` (mode 0600) for agents' keys;
- a witness directory beside the data directory (``<data_dir>-witness``).

Anything the configuration sets already is kept. Staging and production get
nothing made for them: a missing key is an error there, by design.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from config.settings import Settings
from fleet.audit.log import AuditFiles
from fleet.audit.signing import init_signing_key, load_signer
from fleet.secrets import new_vault_key

_LOCAL = ("local", "test")


def _write_once(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return  # another process of the same first start wrote it
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _files(settings: Settings) -> tuple[Path, Path, Path, Path]:
    """(signing key, pin, vault key, witness dir) of a local stack."""
    data_dir = settings.data_dir.resolve()
    key_file = AuditFiles.from_settings(settings).signing_key
    return (
        key_file,
        key_file.parent / "pinned-public-key",
        data_dir / "secrets" / "vault.key",
        data_dir.parent / f"{data_dir.name}-witness",
    )


def prepare_local_trust(settings: Settings) -> Settings:
    """Make what a local stack lacks (once), and return the settings with it filled in."""
    if settings.environment not in _LOCAL:
        return settings
    key_file, pin_file, vault_file, _ = _files(settings)
    if not key_file.exists():
        _write_once(pin_file, init_signing_key(key_file).public_hex, 0o644)
    elif not pin_file.exists():  # a key from before pins existed: pin it now, once
        _write_once(pin_file, load_signer(key_file).public_hex, 0o644)
    if settings.secrets_key == Settings.model_fields["secrets_key"].default:
        _write_once(vault_file, new_vault_key(), 0o600)
    return local_trust(settings)


def local_trust(settings: Settings) -> Settings:
    """The settings with a local stack's pin, witness and vault key, where they exist and the
    configuration names none (for `fleet` commands run beside `fleet up --demo`)."""
    if settings.environment not in _LOCAL:
        return settings
    _, pin_file, vault_file, witness_dir = _files(settings)
    audit_updates: dict[str, Any] = {}
    updates: dict[str, Any] = {}
    if settings.audit.public_key is None and pin_file.exists():
        audit_updates["public_key"] = pin_file.read_text().strip()
    if settings.audit.witness_dir is None and pin_file.exists():
        audit_updates["witness_dir"] = witness_dir
    default_secret = Settings.model_fields["secrets_key"].default
    if settings.secrets_key == default_secret and vault_file.exists():
        updates["secrets_key"] = SecretStr(vault_file.read_text().strip())
    if audit_updates:
        updates["audit"] = settings.audit.model_copy(update=audit_updates)
    return settings.model_copy(update=updates) if updates else settings
