"""Mint a key of a tier for an existing agent of a local GreenHelix gateway.

The gateway's API cannot grant a tier, so an operator mints pro keys with the gateway's own
key manager. Run it with the gateway's Python, from its checkout, on its data directory::

    cd /path/to/a2a && A2A_DATA_DIR=/path/to/data /path/to/venv/bin/python \\
        /path/to/fleet-commander/tests/contract/mint_key_greenhelix.py AGENT_ID TIER

It prints the new key and nothing else on stdout (the contract suite's
FLEET_CONTRACT_MINT_KEY_CMD reads it), problems on stderr with exit status 2.
``A2A_CHECKOUT`` names the checkout when the working directory is not it; ``PAYWALL_DSN``
overrides the key database as it does for the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

AGENT_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
TIERS = ("free", "starter", "pro", "enterprise")


class MintError(Exception):
    pass


def _gateway_modules(checkout: Path) -> tuple[Any, Any]:
    if not (checkout / "gateway" / "src" / "bootstrap.py").is_file():
        raise MintError(f"{checkout} is not a GreenHelix checkout (no gateway/src/bootstrap.py)")
    sys.path.insert(0, str(checkout))
    # Importing the bootstrap registers each product's modules under its own prefix.
    importlib.import_module("gateway.src.bootstrap")
    keys = importlib.import_module("paywall_src.keys")
    storage = importlib.import_module("paywall_src.storage")
    return keys.KeyManager, storage.PaywallStorage


async def mint(checkout: Path, dsn: str, agent_id: str, tier: str) -> str:
    key_manager_cls, storage_cls = _gateway_modules(checkout)
    store = storage_cls(dsn)
    await store.connect()
    try:
        manager = key_manager_cls(store)
        # Every registered agent holds a key; none means the id was never registered.
        if not await manager.get_agent_keys(agent_id):
            raise MintError(f"agent {agent_id!r} has no key at this gateway: register it first")
        info = await manager.create_key(agent_id, tier=tier, scopes=["read", "write"])
    finally:
        await store.close()
    key: str = info["key"]
    return key


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent_id")
    parser.add_argument("tier", choices=TIERS)
    args = parser.parse_args(argv)
    if not AGENT_ID_PATTERN.fullmatch(args.agent_id):
        parser.error(f"agent id {args.agent_id!r} does not match {AGENT_ID_PATTERN.pattern}")
    return args


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    data_dir = os.environ.get("A2A_DATA_DIR", "").strip()
    if not data_dir or not Path(data_dir).is_dir():
        print("A2A_DATA_DIR must name the gateway's data directory", file=sys.stderr)
        return 2
    dsn = os.environ.get("PAYWALL_DSN") or f"sqlite:///{data_dir}/paywall.db"
    if dsn.startswith("sqlite:///") and not Path(dsn.removeprefix("sqlite:///")).is_file():
        print(f"no key database at {dsn}", file=sys.stderr)
        return 2
    checkout = Path(os.environ.get("A2A_CHECKOUT") or os.getcwd()).resolve()
    try:
        print(asyncio.run(mint(checkout, dsn, args.agent_id, args.tier)))
    except MintError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
