"""The contract suite's harness: one *gateway under test*, the project's sandbox or a real one.

The scenarios speak the gateway's REST API (``/v1/...``) and must pass on both.

Environment variables (all optional; unset, the suite runs against the sandbox):

``FLEET_CONTRACT_GATEWAY_URL``
    Base URL of a running gateway to test, e.g. ``http://127.0.0.1:18080``. Unset: the
    project's sandbox is started as a subprocess (``python -m sandbox``) on a free port,
    with a fresh data directory and an admin key of its own, and stopped at the end.
``FLEET_CONTRACT_ADMIN_KEY``
    That gateway's admin-scope key. Required with ``FLEET_CONTRACT_GATEWAY_URL``.
``FLEET_CONTRACT_MINT_KEY_CMD``
    A shell command template that mints a key of a tier for an existing agent and prints
    it on stdout. ``{agent_id}`` and ``{tier}`` are substituted, shell-quoted. The real API
    cannot grant a tier, so with a real gateway this is how tests get pro keys. For a
    GreenHelix checkout::

        cd /path/to/a2a && A2A_DATA_DIR=/path/to/data /path/to/venv/bin/python \\
            /path/to/fleet-commander/tests/contract/mint_key_greenhelix.py {agent_id} {tier}

    Against the sandbox, its control API mints keys and this variable is ignored.
    Against a real gateway without it, a test that asks ``mint_key`` fails and says so.
    This one variable also feeds ``test_sandbox_differential.py``.
``FLEET_CONTRACT_RUN_ID``
    The agent-id prefix of this run (default: ``ct-`` and 8 random hex digits). A real
    gateway keeps its state and has no deregistration, so every run needs ids of its own.

What else the scenarios need at the gateway they register themselves, per run: a treasury
agent (``<run id>-treasury``: swept funds land in its wallet) and an operator agent
(``<run id>-operator``: escalation notices go to its inbox). Nothing has to exist beforehand
but the admin key's agent.

Slow tests. A rotated-out key keeps working for the gateway's grace window: 300 s on the
real gateway (fixed in 1.4.8), ``SANDBOX_KEY_GRACE_S`` on the sandbox this harness starts.
The tests that wait it out are marked ``slow``; ``-m "not slow"`` deselects them. They share
one deadline, so against a real gateway the whole suite waits about 300 s once.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
import pytest

if TYPE_CHECKING:
    from tests.contract.commander import Commander

ROOT = Path(__file__).resolve().parents[2]
AGENT_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
TIERS = ("free", "starter", "pro", "enterprise")
MINT_TIMEOUT_S = 60.0

MintKey = Callable[[str, str], str]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: waits out the gateway's key grace window (300 s on a real gateway)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.contract)


@dataclass(frozen=True)
class GatewayUnderTest:
    base_url: str
    admin_key: str
    kind: Literal["sandbox", "remote"]
    mint_key_cmd: str | None = None

    def http(self, key: str | None = None, timeout_s: float = 30.0) -> httpx.Client:
        """A client on the gateway's REST API; ``key`` goes in as a Bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def admin(self) -> httpx.Client:
        return self.http(self.admin_key)


# --- the sandbox as the gateway under test -------------------------------------------------
# The sandbox's start-up and its key-minting control endpoint are the only sandbox-specific
# parts; both are here.

SANDBOX_READY_TIMEOUT_S = 60.0
# Short, so the scenarios that wait for a rotated key to die finish in seconds here.
SANDBOX_KEY_GRACE_S = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sandbox_env(port: int, admin_key: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FLEET_SANDBOX__HOST": "127.0.0.1",
        "FLEET_SANDBOX__PORT": str(port),
        "FLEET_SANDBOX__LATENCY_MS": "0",
        "FLEET_SANDBOX__LATENCY_JITTER_MS": "0",
        "FLEET_GATEWAY__ADMIN_KEY": admin_key,
        "FLEET_DATA_DIR": str(data_dir),
    }


def _sandbox_ready(base_url: str, admin_key: str) -> bool:
    try:
        answer = httpx.get(
            f"{base_url}/_sandbox/health",
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=2.0,
        )
    except httpx.TransportError:
        return False
    return answer.status_code == 200


@dataclass
class _SandboxRun:
    gateway: GatewayUnderTest
    process: subprocess.Popen[bytes]
    log: Path


def _start_sandbox(data_dir: Path) -> _SandboxRun:
    port, admin_key = _free_port(), secrets.token_hex(16)
    base_url = f"http://127.0.0.1:{port}"
    log = data_dir / "sandbox.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--key-grace-s", str(SANDBOX_KEY_GRACE_S)],
            cwd=ROOT,
            env=_sandbox_env(port, admin_key, data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + SANDBOX_READY_TIMEOUT_S
    while not _sandbox_ready(base_url, admin_key):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"sandbox did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.1)
    return _SandboxRun(GatewayUnderTest(base_url, admin_key, "sandbox"), process, log)


def _stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _mint_at_sandbox(gateway: GatewayUnderTest, agent_id: str, tier: str) -> str:
    with gateway.admin() as http:
        answer = http.post("/_sandbox/keys", json={"agent_id": agent_id, "tier": tier})
    # The control API answers 200 (its own, not the gateway's, convention).
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"sandbox refused a {tier} key for {agent_id}: {answer.text[:500]}")
    key: str = answer.json()["key"]
    return key


# --- a real gateway ------------------------------------------------------------------------


def _remote_gateway(url: str) -> GatewayUnderTest:
    admin_key = os.environ.get("FLEET_CONTRACT_ADMIN_KEY", "").strip()
    if not admin_key:
        raise pytest.UsageError(
            "FLEET_CONTRACT_GATEWAY_URL is set but FLEET_CONTRACT_ADMIN_KEY is not: "
            "the suite needs that gateway's admin-scope key"
        )
    cmd = os.environ.get("FLEET_CONTRACT_MINT_KEY_CMD", "").strip() or None
    if cmd is not None:
        for field in ("{agent_id}", "{tier}"):
            if field not in cmd:
                raise pytest.UsageError(f"FLEET_CONTRACT_MINT_KEY_CMD must contain {field}")
    return GatewayUnderTest(url.rstrip("/"), admin_key, "remote", cmd)


def _mint_with_command(cmd: str, agent_id: str, tier: str) -> str:
    line = cmd.replace("{agent_id}", shlex.quote(agent_id)).replace("{tier}", shlex.quote(tier))
    proc = subprocess.run(
        line, shell=True, capture_output=True, text=True, timeout=MINT_TIMEOUT_S, check=False
    )
    printed = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not printed:
        raise RuntimeError(
            f"FLEET_CONTRACT_MINT_KEY_CMD failed for {agent_id} ({tier}), "
            f"exit {proc.returncode}: {proc.stderr.strip()[-1000:]}"
        )
    return printed[-1].strip()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway() -> Iterator[GatewayUnderTest]:
    """The gateway under test: the one named by FLEET_CONTRACT_GATEWAY_URL, else a sandbox."""
    url = os.environ.get("FLEET_CONTRACT_GATEWAY_URL", "").strip()
    if url:
        yield _remote_gateway(url)
        return
    with tempfile.TemporaryDirectory(prefix="fleet-contract-") as data_dir:
        run = _start_sandbox(Path(data_dir))
        try:
            yield run.gateway
        finally:
            _stop(run.process)


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """This run's agent-id prefix; every agent a test makes starts with it."""
    prefix = os.environ.get("FLEET_CONTRACT_RUN_ID", "").strip() or f"ct-{secrets.token_hex(4)}"
    # Room for "-<test name>-<n>" within the gateway's 128 characters.
    if not AGENT_ID_PATTERN.fullmatch(prefix) or len(prefix) > 40:
        raise pytest.UsageError(
            f"FLEET_CONTRACT_RUN_ID {prefix!r}: must match {AGENT_ID_PATTERN.pattern} "
            "and be at most 40 characters"
        )
    return prefix


@pytest.fixture
def new_agent_id(run_prefix: str, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``new_agent_id("payer")`` → ``<run prefix>-<test name>-payer``, unique in the run."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name.removeprefix("test_")).strip("-")

    def make(role: str) -> str:
        agent_id = f"{run_prefix}-{test[:48]}-{role}"
        if not AGENT_ID_PATTERN.fullmatch(agent_id):
            raise ValueError(f"agent id {agent_id!r} does not match the gateway's pattern")
        return agent_id

    return make


@pytest.fixture(scope="session")
def mint_key(gateway: GatewayUnderTest) -> MintKey:
    """``mint_key(agent_id, tier) -> key``: a key of that tier for an existing agent.

    The sandbox mints through its control API; a real gateway through
    FLEET_CONTRACT_MINT_KEY_CMD, since its API cannot grant a tier.
    """

    def mint(agent_id: str, tier: str) -> str:
        if tier not in TIERS:
            raise ValueError(f"tier {tier!r}: the gateway's tiers are {', '.join(TIERS)}")
        if gateway.kind == "sandbox":
            return _mint_at_sandbox(gateway, agent_id, tier)
        if gateway.mint_key_cmd is None:
            pytest.fail(
                f"this test needs a {tier} key for {agent_id}, which the gateway's API cannot "
                "grant: set FLEET_CONTRACT_MINT_KEY_CMD (see tests/contract/conftest.py)",
                pytrace=False,
            )
        return _mint_with_command(gateway.mint_key_cmd, agent_id, tier)

    return mint


@dataclass(frozen=True)
class RunParties:
    """The agents of this run that the fleet's policy names: treasury and operator."""

    treasury: str
    operator: str


@pytest.fixture(scope="session")
def run_parties(gateway: GatewayUnderTest, run_prefix: str) -> RunParties:
    parties = RunParties(f"{run_prefix}-treasury", f"{run_prefix}-operator")
    with gateway.http() as anonymous:
        for agent_id in (parties.treasury, parties.operator):
            answer = anonymous.post("/v1/register", json={"agent_id": agent_id})
            assert answer.status_code == 201, f"registering {agent_id}: {answer.text}"
    return parties


@pytest.fixture(scope="session")
def commander(
    gateway: GatewayUnderTest,
    mint_key: MintKey,
    run_parties: RunParties,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Commander]:
    """Fleet Commander's domain, wired to the gateway under test (see commander.py)."""
    from tests.contract.commander import commander as build

    with build(
        gateway,
        mint_key,
        tmp_path_factory.mktemp("fleet"),
        run_parties.treasury,
        run_parties.operator,
        redis_url,
    ) as built:
        yield built


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the suite's own: the per-agent locks run their real Lua scripts on it."""
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)
