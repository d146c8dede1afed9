"""The one settings object.

Environment variables (prefix ``FLEET_``, nested with ``__``, e.g.
``FLEET_GATEWAY__TIMEOUT_S=5``) and an optional ``.env`` file set the process
settings; the domain policy (SLA templates, escalation, alerts, budgets,
approvals) lives in YAML, by default ``config/defaults/policy.yaml``, and is
validated by the models in :mod:`config.policy`.

Anything invalid raises :class:`ConfigError`, whose message is one line naming
the source (variable or file), the field and what was expected.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError, describe_validation_error
from config.policy import Policy, load_policy

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_POLICY_FILE = PACKAGE_DIR / "defaults" / "policy.yaml"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Section):
    """Where the agent-commerce gateway is and how hard we lean on it."""

    # The gateway's root (operations add their /v1/... paths); None means "the
    # local sandbox", whose address comes from ``sandbox``.
    base_url: AnyUrl | None = None
    admin_key: SecretStr = SecretStr("sandbox-admin-key")
    # The agent id the admin key belongs to: the sender of operator notices.
    admin_agent_id: str = "fleet-admin"
    # The operator's agent at the gateway: tier 3 and 4 notices go to its inbox.
    operator_agent_id: str = "fleet-operator"
    timeout_s: PositiveFloat = 10.0
    connect_timeout_s: PositiveFloat = 3.0
    # Retry ceiling: total attempts per call, transient failures only.
    max_attempts: PositiveInt = 3
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.2
    backoff_max_s: Annotated[float, Field(ge=0)] = 5.0
    # A Retry-After longer than this is not waited for: the call fails fast.
    retry_after_max_s: Annotated[float, Field(ge=0)] = 30.0
    breaker_failure_threshold: PositiveInt = 5
    breaker_reset_s: PositiveFloat = 30.0
    max_connections: PositiveInt = 200
    # Idle connections are closed after this, before the server closes them
    # (load balancers 60 s, nginx and aiohttp 75 s): reusing one it is closing
    # fails a call that was already sent.
    keepalive_s: PositiveFloat = 50.0
    # An answer past either cap fails its connection (the gateway's are a few kilobytes).
    max_response_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    max_response_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024


class SandboxSettings(_Section):
    """The local gateway sandbox: where it listens and how it misbehaves."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    seed: int = 42
    # Agents pre-seeded with behaviour profiles (0: only what gets registered).
    agents: Annotated[int, Field(ge=0)] = 0
    latency_ms: Annotated[float, Field(ge=0)] = 50.0
    latency_jitter_ms: Annotated[float, Field(ge=0)] = 10.0
    error_rate: Fraction = 0.0
    timeout_rate: Fraction = 0.0
    timeout_s: PositiveFloat = 30.0


class RedisSettings(_Section):
    # None: `fleet up` starts an embedded Redis-protocol server and points
    # every process at it.
    url: str | None = None
    embedded_port: Annotated[int, Field(ge=0, le=65535)] = 6390


class WorkerSettings(_Section):
    """Deliberate limits for every worker (per-queue overrides in workers/)."""

    soft_time_limit_s: PositiveInt = 300
    time_limit_s: PositiveInt = 360
    prefetch_multiplier: PositiveInt = 4
    # Must exceed the longest countdown/ETA we schedule, or Redis redelivers
    # a message that is merely waiting.
    visibility_timeout_s: PositiveInt = 3600
    result_expires_s: PositiveInt = 3600
    concurrency: PositiveInt = 4
    # A late-acknowledged message delivered this many times without finishing (its
    # worker died under it each time) goes to the dead letters instead of running again.
    max_deliveries: Annotated[int, Field(ge=2, le=100)] = 5

    @model_validator(mode="after")
    def _hard_above_soft(self) -> WorkerSettings:
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("time_limit_s must be greater than soft_time_limit_s")
        return self


class ScheduleSettings(_Section):
    """Beat cadences, in seconds."""

    heartbeat_s: PositiveFloat = 30.0
    metrics_sweep_s: PositiveFloat = 60.0
    sla_check_s: PositiveFloat = 300.0
    escalation_tick_s: PositiveFloat = 60.0
    # Multi-window burn-rate alerts: the 5-minute short window needs about a minute.
    burn_alert_s: PositiveFloat = 60.0
    key_rotation_check_s: PositiveFloat = 3600.0
    provisioning_resume_s: PositiveFloat = 60.0
    # An agent whose provisioning has not moved for this long is re-dispatched.
    provisioning_stall_s: PositiveFloat = 300.0
    # Per-agent provisioning lock, renewed after every step: longer than one
    # step can take (retry ceiling × gateway timeout).
    provisioning_lock_ttl_s: PositiveFloat = 60.0
    # Behavioural signals come from task logs, not from the sweep's polls:
    # every five minutes is plenty for hour-long windows.
    behaviour_check_s: PositiveFloat = 300.0
    # Beat is one scheduler: the one holding this Redis lock sends; another beat
    # waits and takes over at most this long after the holder died.
    beat_lock_ttl_s: Annotated[float, Field(ge=5)] = 30.0


class WorkSettings(_Section):
    """The work plane's process-level knobs (policy numbers are in policy.work)."""

    # The A2A base of an agent whose row names none: {gateway} is the gateway's root
    # (the sandbox serves each simulated agent at /a2a/{agent_id}), {agent_id} the agent.
    a2a_url_template: str = "{gateway}/a2a/{agent_id}"
    # Agent cards are fetched once and kept this long per process.
    card_ttl_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # Concurrent A2A calls per worker process (its connection pool).
    max_connections: Annotated[int, Field(ge=1, le=10000)] = 256
    # Idempotency keys are remembered this long.
    idempotency_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400
    # Measured per-agent signals are flushed to the snapshots at least this often.
    measured_flush_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Task records are written to the database in batches of at most this many.
    record_batch: Annotated[int, Field(ge=1, le=10000)] = 1000


class MetricsSettings(_Section):
    """How the monitoring sweep fans out and polls (README, Performance, has the measurements)."""

    # Agents per `metrics.poll_batch` message: 10,000 agents are 20 messages, not 10,000.
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500
    # Gateway calls in flight at once per worker process (an agent's four reads go out together).
    # 100 × the default 4 processes = 400 per metrics worker: measured, four
    # processes of 100 beat two of 200 (one process polls while another
    # folds its batch into snapshots), README, Performance.
    in_flight: Annotated[int, Field(ge=4, le=2000)] = 100
    # Per-call timeout of the sweep's reads: one hung call holds its batch at
    # most this long per attempt (the retry ceiling is the gateway's).
    poll_timeout_s: PositiveFloat = 5.0
    # Consecutive failures that open a tool's breaker in the sweep's client.
    # The sweep makes hundreds of calls at once: at 10 % random errors, five
    # failures in a row happen about once a sweep (measured: the breaker then
    # failed 60-100 % of the agents fast for 30 s); fifty in a row is an outage.
    breaker_failure_threshold: PositiveInt = 50
    # Agent statuses the sweep polls. Paused agents stay observed, so the
    # alert that paused one resolves once it recovers.
    statuses: list[str] = ["active", "paused"]
    # A snapshot nobody refreshes (agent retired) disappears after this.
    snapshot_ttl_s: Annotated[int, Field(ge=0)] = 86400
    # Per-agent rule state (durations, baselines, the hour being rolled up).
    state_ttl_s: Annotated[int, Field(ge=60)] = 7 * 86400
    # Sweep records (progress, per-agent failures) kept this long in Redis.
    sweep_record_ttl_s: Annotated[int, Field(ge=60)] = 86400
    # /metrics lists per-agent series up to this many agents, fleet totals always.
    prometheus_max_agents: Annotated[int, Field(ge=0)] = 20000


class SlaSettings(_Section):
    """How the compliance sweep fans out."""

    # Agents per `sla.check_batch` message: 10,000 agents are 40 messages, not 10,000.
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 250
    # A metrics snapshot older than this is no cross-check.
    snapshot_max_age_s: PositiveFloat = 300.0


class StreamSettings(_Section):
    """The gateway's event stream: its one consumer and the heartbeat ingest behind it."""

    # Events per `metrics.ingest_heartbeats` message, and the longest an event
    # waits for its batch to fill: 10,000 agents a minute are ~20 messages a minute.
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500
    batch_wait_s: PositiveFloat = 0.25
    # The one-consumer lock: a replica standing by takes over within this long.
    lock_ttl_s: Annotated[float, Field(ge=1)] = 15.0
    # The cursor is in Redis after every batch; in the database (it outlives a
    # Redis flush) at most this long after.
    cursor_db_every_s: PositiveFloat = 5.0
    # Reconnects after the gateway's hourly close or a failure: backoff bounds.
    reconnect_initial_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 30.0
    # The gateway beats every 5 s: this long without a byte is a dead connection.
    read_timeout_s: PositiveFloat = 30.0
    # Agents' fleets, identity keys and SLA terms are re-read from the database this often.
    directory_ttl_s: PositiveFloat = 60.0


class BudgetSettings(_Section):
    """The budget store (fleet.budgets): how long a reservation may wait on Redis, and the
    ledger's drain off the hot path."""

    # A reservation that gets no answer from Redis within this is refused (fail closed).
    redis_timeout_s: PositiveFloat = 2.0
    # Ledger rows per database insert, and how often beat drains the Redis list.
    ledger_batch_size: Annotated[int, Field(ge=1, le=10000)] = 1000
    ledger_drain_s: PositiveFloat = 5.0
    # How often beat releases reservations whose task vanished and re-asserts pauses and
    # raised limits from the database into Redis.
    sweep_s: PositiveFloat = 30.0


class SupervisorSettings(_Section):
    """How `fleet up` restarts a process that died."""

    # Waits before a restart: the first, doubled after each quick exit, at most the max.
    restart_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    restart_backoff_max_s: Annotated[float, Field(ge=0)] = 30.0
    # A process that exits within this long of starting exited quickly; this many
    # quick exits in a row is a start-up error a restart will not mend: `fleet up` stops.
    quick_exit_s: PositiveFloat = 10.0
    max_quick_exits: Annotated[int, Field(ge=1)] = 5


class FlowerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5555
    user: str = "admin"
    password: SecretStr = SecretStr("fleet-demo")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # The deployment-wide bearer token: one principal ("api-token"), so it
    # counts once towards any quorum. None: only accounts and service tokens.
    token: SecretStr | None = SecretStr("fleet-demo-token")
    # Requests with a larger body are refused (413) before it is read.
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 2_000_000
    # Rendered /metrics is served from memory this long (a scrape costs a Redis scan).
    metrics_cache_s: Annotated[float, Field(ge=0, le=300)] = 5.0

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class ConsoleSettings(_Section):
    """The web console (web/console/, README, The console)."""

    # The live stream looks for a newer sweep this often: an update reaches the
    # browser within this (plus rendering) of the sweep that caused it.
    live_poll_s: Annotated[float, Field(ge=0.05, le=10)] = 0.25
    # A live stream ends after this long; the browser's EventSource reconnects.
    live_max_s: Annotated[float, Field(ge=5, le=3600)] = 300.0
    # Rows per page of agent lists, and the most a page may ask for.
    page_size: Annotated[int, Field(ge=5, le=1000)] = 50
    max_page_size: Annotated[int, Field(ge=5, le=5000)] = 500
    # Open alerts shown on the overview, newest first.
    overview_alerts: Annotated[int, Field(ge=1, le=500)] = 20
    # Hours of history the charts show.
    history_hours: Annotated[int, Field(ge=1, le=24 * 31)] = 24
    # Recent tasks and audit entries on an agent's page.
    agent_recent: Annotated[int, Field(ge=1, le=500)] = 20


class IdentitySettings(_Section):
    """Who may call the API (README, Security and access)."""

    # Sign-in sessions (`fleet login`, POST /api/v1/auth/sessions) last this long.
    session_ttl_s: Annotated[int, Field(ge=60, le=7 * 86400)] = 8 * 3600
    # The role FLEET_API__TOKEN carries.
    api_token_role: Literal["viewer", "operator", "approver", "admin"] = "admin"
    # Optional OIDC: JWTs from this issuer, verified against its JWKS, are accepted.
    oidc_issuer: str | None = None
    oidc_jwks_url: AnyUrl | None = None
    oidc_audience: str = "fleet-commander"
    # The claim naming the role (viewer, operator, approver, admin).
    oidc_role_claim: str = "fleet_role"

    @model_validator(mode="after")
    def _oidc_complete(self) -> IdentitySettings:
        if (self.oidc_issuer is None) != (self.oidc_jwks_url is None):
            raise ValueError("oidc_issuer and oidc_jwks_url are set together")
        return self


class AuditSettings(_Section):
    """Trust anchors of the audit trail, kept out of the policy file and the data directory."""

    # The Ed25519 public key (64 hex characters) `fleet audit init-key` printed: the only key
    # verify trusts. Unset, verify refuses to vouch for anything.
    public_key: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    # A directory outside data_dir (another mount, append-only) that receives every signed
    # checkpoint and head, so a rollback or a cut tail of the database is named by verify.
    witness_dir: Path | None = None
    # Also hold the log to the checkpoints the outbox published on the gateway's event bus.
    witness_bus: bool = False

    @field_validator("public_key", "witness_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # FLEET_AUDIT__PUBLIC_KEY= (compose's `${VAR:-}`) means "not set", not a bad key.
        return None if value == "" else value


class TracingSettings(_Section):
    """OpenTelemetry traces (fleet/tracing.py). No endpoint: off, a no-op that costs nothing
    (no SDK, no exporter thread); W3C trace context is still carried through."""

    # The OTLP/HTTP collector's root (``http://collector:4318``; ``/v1/traces`` is added) or
    # its full traces URL. Unset: tracing is off.
    endpoint: AnyUrl | None = None
    # ``service.namespace`` of every process's resource; each process names itself
    # (``service.name``: fleet-worker, fleet-api, ...).
    service_name: str = Field(default="fleet-commander", min_length=1, max_length=128)
    # Share of new traces kept (by trace id, so every process keeps or drops the same trace);
    # a caller's unsampled trace stays unsampled.
    sample_ratio: Fraction = 1.0
    # How often spans leave in batches, how many may wait, how long one export may take.
    schedule_delay_ms: Annotated[int, Field(ge=10, le=60_000)] = 2000
    max_queue_size: Annotated[int, Field(ge=16, le=1_000_000)] = 8192
    max_export_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 512
    export_timeout_s: PositiveFloat = 10.0

    @field_validator("endpoint", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: AnyUrl | None) -> AnyUrl | None:
        if value is not None and value.scheme not in ("http", "https"):
            raise ValueError("must be http:// or https:// (an OTLP/HTTP collector)")
        return value

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    @property
    def traces_url(self) -> str | None:
        """The URL spans are posted to: the endpoint, with ``/v1/traces`` unless it has it."""
        if self.endpoint is None:
            return None
        url = str(self.endpoint).rstrip("/")
        return url if url.endswith("/v1/traces") else f"{url}/v1/traces"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    # demo, dev, local and test may run on the demo's default secrets (on loopback only).
    environment: Literal["local", "test", "dev", "demo", "staging", "production"] = "local"
    fleet_name: str = "demo"
    data_dir: Path = Path("var")
    database_url: str | None = None  # None: SQLite file in data_dir
    policy_file: Path = DEFAULT_POLICY_FILE
    # Key that encrypts agents' API keys at rest.
    secrets_key: SecretStr = SecretStr("change-me-in-production")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A file holding seconds to add to the system clock (fleet/clock.py OffsetFileClock):
    # tests and demos move every process's time by rewriting it. None: the system clock.
    clock_offset_file: Path | None = None

    redis: RedisSettings = RedisSettings()
    gateway: GatewaySettings = GatewaySettings()
    sandbox: SandboxSettings = SandboxSettings()
    worker: WorkerSettings = WorkerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()
    work: WorkSettings = WorkSettings()
    sla: SlaSettings = SlaSettings()
    stream: StreamSettings = StreamSettings()
    budgets: BudgetSettings = BudgetSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    flower: FlowerSettings = FlowerSettings()
    api: ApiSettings = ApiSettings()
    console: ConsoleSettings = ConsoleSettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _witness_outside_data_dir(self) -> Settings:
        witness = self.audit.witness_dir
        if witness is not None and witness.resolve().is_relative_to(self.data_dir.resolve()):
            raise ValueError(
                f"audit.witness_dir ({witness}) must be outside data_dir ({self.data_dir}): "
                "a witness that goes down with the data directory sees nothing"
            )
        return self

    identity: IdentitySettings = IdentitySettings()
    tracing: TracingSettings = TracingSettings()

    @property
    def redis_url(self) -> str:
        if self.redis.url:
            return self.redis.url
        password = embedded_redis_password(self.data_dir)
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.redis.embedded_port}/0"

    @property
    def gateway_url(self) -> str:
        """The gateway's root URL, e.g. ``http://127.0.0.1:8765``."""
        if self.gateway.base_url is not None:
            return str(self.gateway.base_url).rstrip("/")
        return f"http://{self.sandbox.host}:{self.sandbox.port}"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleet.db').resolve()}"

    @functools.cached_property
    def policy(self) -> Policy:
        return load_policy(self.policy_file)


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings and policy; raise ConfigError on anything bad."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source="environment", env_prefix="FLEET_")
        ) from None
    settings.policy  # noqa: B018 — validate the YAML at start-up, not on first use
    check_countdowns(settings)
    from config.secret_policy import refuse_default_secrets

    refuse_default_secrets(settings)
    return settings


# The longest wait tasks/escalation.py asks of the broker when an action is not due yet.
ESCALATION_MAX_COUNTDOWN_S = 3000.0


def countdowns(settings: Settings) -> dict[str, float]:
    """Every countdown the code schedules, by the settings that make it."""
    alerts = settings.policy.alerts
    return {
        # A resumed agent whose lock a dead worker still holds waits out the lock.
        "schedule.provisioning_lock_ttl_s (provisioning resume)": (
            settings.schedule.provisioning_lock_ttl_s
        ),
        "policy alerts.webhook_retry_s × (alerts.webhook_max_attempts - 1)": (
            alerts.webhook_retry_s * max(0, alerts.webhook_max_attempts - 1)
        ),
        "the escalation retry cap (config.settings.ESCALATION_MAX_COUNTDOWN_S)": (
            ESCALATION_MAX_COUNTDOWN_S
        ),
    }


def check_countdowns(settings: Settings) -> None:
    """Redis hands a message that waits (countdown, ETA) to another worker once the
    visibility timeout has passed: every countdown must be shorter, or waiting work runs twice."""
    limit = settings.worker.visibility_timeout_s
    too_long = {name: s for name, s in countdowns(settings).items() if s >= limit}
    if too_long:
        named = ", ".join(f"{name} = {s:g} s" for name, s in too_long.items())
        raise ConfigError(
            f"FLEET_WORKER__VISIBILITY_TIMEOUT_S (worker.visibility_timeout_s) = {limit} s must "
            f"exceed every countdown the tasks schedule; not longer than: {named}"
        )


EMBEDDED_REDIS_PASSWORD_FILE = Path("redis") / "password"


def embedded_redis_password(data_dir: Path) -> str | None:
    """The embedded Redis's password, generated once by `fleet up` into the data directory."""
    try:
        return (data_dir / EMBEDDED_REDIS_PASSWORD_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    """For tests and `fleet` sub-commands that change the environment."""
    get_settings.cache_clear()


__all__ = [
    "ConfigError",
    "Settings",
    "get_settings",
    "load_settings",
    "reset_settings_cache",
]
