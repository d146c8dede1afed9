"""The sandbox against a real gateway: the same requests, the same statuses, headers and keys.

Runs only when ``FLEET_CONTRACT_GATEWAY_URL`` names a gateway; it needs the same
``FLEET_CONTRACT_ADMIN_KEY`` and ``FLEET_CONTRACT_MINT_KEY_CMD`` as the rest of the suite
(see conftest.py), and starts a sandbox of its own to compare with.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import SandboxProcess
from tests.contract.conftest import GatewayUnderTest, MintKey
from tests.contract.differential import diff, run_sequence

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("FLEET_CONTRACT_GATEWAY_URL", "").strip(),
        reason="FLEET_CONTRACT_GATEWAY_URL names no gateway to compare the sandbox with",
    ),
]


def test_sandbox_answers_the_sequence_as_the_real_gateway(
    gateway: GatewayUnderTest, mint_key: MintKey, sandbox: SandboxProcess
) -> None:
    real = run_sequence(gateway.base_url, gateway.admin_key, mint_key)
    double = run_sequence(sandbox.url, sandbox.admin_key, sandbox.mint_key)
    assert diff(real, double) == []
