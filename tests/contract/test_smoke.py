"""The harness reaches the gateway under test: register an agent and read its balance."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from tests.contract.conftest import GatewayUnderTest, MintKey


def test_registered_agent_reads_its_own_balance(
    gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    agent_id = new_agent_id("a")
    with gateway.http() as anonymous:
        registered = anonymous.post("/v1/register", json={"agent_id": agent_id})
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["agent_id"] == agent_id and body["tier"] == "free"
    with gateway.http(body["api_key"]) as own:
        balance = own.get(f"/v1/billing/wallets/{agent_id}/balance")
    assert balance.status_code == 200, balance.text
    # Registration's wallet holds the signup bonus; money parsed from its text.
    assert balance.json(parse_float=Decimal)["balance"] in (Decimal("500.00"), "500.00")
    assert balance.headers["X-RateLimit-Limit"] == "100"


def test_minted_pro_key_has_the_pro_window(
    gateway: GatewayUnderTest, new_agent_id: Callable[[str], str], mint_key: MintKey
) -> None:
    agent_id = new_agent_id("a")
    with gateway.http() as anonymous:
        assert anonymous.post("/v1/register", json={"agent_id": agent_id}).status_code == 201
    pro_key = mint_key(agent_id, "pro")
    with gateway.http(pro_key) as own:
        balance = own.get(f"/v1/billing/wallets/{agent_id}/balance")
    assert balance.status_code == 200, balance.text
    assert balance.headers["X-RateLimit-Limit"] == "10000"
