"""The sandbox against a real gateway: the same requests, the same statuses, headers and keys.

Runs only when ``FLEET_CONTRACT_GATEWAY_URL`` names a gateway. It also needs
``FLEET_CONTRACT_ADMIN_KEY`` (an admin-scope key there) and
``FLEET_CONTRACT_MINT_CMD``, a shell command with ``{agent_id}`` and ``{tier}``
that prints a new key of that tier for that agent as its last word (the real
gateway grants no tier through its API), e.g.::

    FLEET_CONTRACT_MINT_CMD='cd /work/gw/a2a && A2A_DATA_DIR=/work/gw/data \
        /work/gw/venv/bin/python /work/gw/mint_key.py {agent_id} {tier}'
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import SandboxProcess
from tests.contract.differential import diff, run_sequence

GATEWAY = os.environ.get("FLEET_CONTRACT_GATEWAY_URL")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not GATEWAY, reason="FLEET_CONTRACT_GATEWAY_URL names no gateway"),
]


def _minter() -> Callable[[str, str], str]:
    template = os.environ.get("FLEET_CONTRACT_MINT_CMD")
    if not template:
        pytest.fail("FLEET_CONTRACT_MINT_CMD is needed to mint pro keys at the real gateway")

    def mint(agent_id: str, tier: str) -> str:
        command = template.format(agent_id=shlex.quote(agent_id), tier=shlex.quote(tier))
        out = subprocess.run(
            command, shell=True, capture_output=True, text=True, check=True, timeout=60
        )
        return out.stdout.split()[-1]

    return mint


def test_sandbox_answers_the_sequence_as_the_real_gateway(sandbox: SandboxProcess) -> None:
    admin = os.environ.get("FLEET_CONTRACT_ADMIN_KEY")
    if not admin:
        pytest.fail("FLEET_CONTRACT_ADMIN_KEY is needed next to FLEET_CONTRACT_GATEWAY_URL")
    assert GATEWAY is not None
    real = run_sequence(GATEWAY, admin, _minter())
    double = run_sequence(sandbox.url, sandbox.admin_key, sandbox.mint_key)
    assert diff(real, double) == []
