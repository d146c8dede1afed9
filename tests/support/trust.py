"""The audit pin, witness and vault key a test's own stack makes on first start (stack.trust)."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings, load_settings
from fleet.audit.signing import init_signing_key
from stack.trust import prepare_local_trust


def trust_env(data_dir: Path) -> dict[str, str]:
    """FLEET_* variables pinning the audit key made in data_dir, its witness and a vault key."""
    settings = prepare_local_trust(load_settings(data_dir=data_dir))
    assert settings.audit.public_key is not None and settings.audit.witness_dir is not None
    return {
        "FLEET_AUDIT__PUBLIC_KEY": settings.audit.public_key,
        "FLEET_AUDIT__WITNESS_DIR": str(settings.audit.witness_dir),
        "FLEET_SECRETS_KEY": settings.secrets_key.get_secret_value(),
    }


def trusted(settings: Settings) -> Settings:
    return prepare_local_trust(settings)


def pinned_key(signing_key: Path) -> str:
    """Make the signing key at signing_key, as `fleet audit init-key` does; its public hex."""
    return init_signing_key(signing_key).public_hex
