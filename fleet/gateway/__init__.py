"""The gateway client: the only code in the project that talks to the gateway.

    from fleet.gateway import GatewayClient, tools

    with GatewayClient.from_settings(settings) as gateway:
        agent = gateway.run(tools.register_agent(agent_id, "standard", ["search"]))
        balance = gateway.run(tools.get_balance(agent_id), api_key=agent_key)

See :mod:`fleet.gateway.client` for the clients, :mod:`fleet.gateway.tools`
for the tools and :mod:`fleet.gateway.errors` for what can go wrong.
"""

from fleet.gateway import tools
from fleet.gateway._core import GatewayConfig, GatewayResult, parse_retry_after
from fleet.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from fleet.gateway.client import AsyncGatewayClient, GatewayClient
from fleet.gateway.errors import (
    AuthError,
    BadInput,
    CircuitOpen,
    Conflict,
    GatewayError,
    InvalidResponse,
    NotFound,
    RateLimited,
    Unavailable,
)
from fleet.gateway.tools import Tool, ToolCall
from fleet.gateway.tracing import TraceContext

__all__ = [
    "AsyncGatewayClient",
    "AuthError",
    "BadInput",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "Conflict",
    "GatewayClient",
    "GatewayConfig",
    "GatewayError",
    "GatewayResult",
    "InvalidResponse",
    "NotFound",
    "RateLimited",
    "Tool",
    "ToolCall",
    "TraceContext",
    "Unavailable",
    "parse_retry_after",
    "tools",
]
