"""A small typed client for the sandbox's admin API (``/_sandbox/...``).

Used by tests, benchmarks and the CLI::

    sb = SandboxControl("http://127.0.0.1:8765", "sandbox-admin-key")
    sb.wait_ready(10)
    sb.reset()
    sb.set_faults(error_rate=0.1, tools={"create_wallet": {"outages": [{"duration_s": 60}]}})
    sb.advance_clock(3600)
    assert sb.counters()["tools"].get("register_agent") == 1
"""

from __future__ import annotations

import time
from typing import Any

import httpx


class SandboxError(RuntimeError):
    """The admin API refused a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class SandboxControl:
    """Admin client for one sandbox. ``url`` is the base URL, ``gateway_url`` the tool endpoint."""

    def __init__(
        self,
        base_url: str,
        admin_key: str = "sandbox-admin-key",
        *,
        tool_path: str = "/v1",
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/")
        self.admin_key = admin_key
        self.tool_path = tool_path
        self.gateway_url = self.url + tool_path
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )

    # --- plumbing ------------------------------------------------------------------

    def _request(
        self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = self._http.request(method, "/_sandbox" + path, json=json, params=params)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise SandboxError(
                response.status_code,
                str(error.get("code", "error")),
                str(error.get("message", response.text[:200])),
            )
        if not isinstance(body, dict):
            raise SandboxError(
                response.status_code, "invalid_response", "answer is not a JSON object"
            )
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the admin API -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Poll /health until it answers 200; raise TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                return self.health()
            except (httpx.TransportError, SandboxError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sandbox at {self.url} not ready after {timeout} s: {last}")
            time.sleep(0.05)

    def counters(self, *, agents: bool = True, agent_prefix: str = "") -> dict[str, Any]:
        """{"total", "tools": {tool: n}, "statuses": {tool: {status: n}}, "agents": {id: {tool: n}}}."""
        params = {"agents": "1" if agents else "0"}
        if agent_prefix:
            params["agent_prefix"] = agent_prefix
        return self._request("GET", "/counters", params=params)

    def reset_counters(self) -> None:
        self._request("POST", "/counters/reset")

    def faults(self) -> dict[str, Any]:
        return self._request("GET", "/faults")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Merge into the fault config, e.g. ``set_faults(error_rate=0.2, tools={...})``."""
        return self._request("PUT", "/faults", json=faults)

    def clear_faults(self) -> dict[str, Any]:
        """No faults (latency settings are kept)."""
        return self._request("DELETE", "/faults")

    def clock(self) -> dict[str, Any]:
        return self._request("GET", "/clock")

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        return self._request("POST", "/clock/advance", json={"seconds": seconds})

    def seed(self, agents: int, prefix: str = "sim", **options: Any) -> dict[str, Any]:
        """Seed provisioned agents; options: tier, balance, sla_template, profile, services."""
        return self._request("POST", "/seed", json={"agents": agents, "prefix": prefix, **options})

    def state(self) -> dict[str, Any]:
        return self._request("GET", "/state")

    def agent(self, agent_id: str) -> dict[str, Any]:
        return self._request("GET", f"/agents/{agent_id}")

    def set_profile(self, agent_id: str, profile: str) -> dict[str, Any]:
        """Pin a behaviour (healthy, flaky, degrading, cost_runaway, dead, idle), starting now."""
        return self._request("PUT", f"/agents/{agent_id}", json={"profile": profile})

    def messages(
        self, *, to: str | None = None, sender: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        if to is not None:
            params["to"] = to
        if sender is not None:
            params["from"] = sender
        return list(self._request("GET", "/messages", params=params)["messages"])

    def reset(self, agents: int = 0) -> dict[str, Any]:
        """Wipe all state, counters and run-time faults (back to the start-up config)."""
        return self._request("POST", "/reset", json={"agents": agents})

    # --- convenience ---------------------------------------------------------------

    def call(self, tool: str, key: str | None = None, /, **tool_input: Any) -> httpx.Response:
        """One raw tool call (admin key unless ``key``), for tests that look at the HTTP answer."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else None
        return self._http.post(
            self.tool_path, json={"tool": tool, "input": tool_input}, headers=headers
        )
