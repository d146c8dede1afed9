"""docker-compose.yml and the image: the shape of the system, checked without a container
engine. Every service is healthy-checked or one-shot, every volume is declared and named,
the signing key is read-only wherever it is only read, no secret is written down, and
every command (service or health check) is a real `fleet` entry point."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.errors import ConfigError
from config.policy import load_policy
from config.settings import Settings, load_settings
from tests.support.entrypoints import console_scripts, resolve, resolve_script
from workers.queues import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]
DATA_MOUNT = "/var/lib/fleet/data"
KEY_MOUNT = "/var/lib/fleet/keys"
REQUIRED_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?(?P<message>[^}]+)\}")
ANY_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<rest>[^}]*)\}")
# A public key is published, not kept secret: it may be written down or left empty.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(?<!PUBLIC)_KEY$|REDISCLI_AUTH")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def fleet_services() -> dict[str, dict[str, Any]]:
    """The services that run our image (its ENTRYPOINT is `fleet`)."""
    return {n: s for n, s in services().items() if s.get("image") == "fleet-commander:latest"}


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target path -> (named volume, read-only)."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def substituted(value: str) -> str:
    """A value as compose interpolates it: defaults where given, else a placeholder."""

    def one(match: re.Match[str]) -> str:
        rest = match["rest"]
        if rest.startswith((":-", "-")):
            return rest.split("-", 1)[1]
        return f"x{match['name'].lower()}"

    return ANY_VAR.sub(one, value).replace("$$", "$")


def test_the_file_follows_the_compose_specification() -> None:
    """Field names, enums (restart, depends_on conditions), durations and types, checked
    by the Compose specification's own model; merge keys resolved as compose does."""
    from compose_spec import PyCompose

    doc = compose()
    PyCompose.from_json(json.dumps(doc))
    # Not vacuous: a misspelt key is refused.
    doc["services"]["api"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(ValueError, match="intervall"):
        PyCompose.from_json(json.dumps(doc))


def test_entrypoint_is_the_fleet_console_script() -> None:
    assert console_scripts()["fleet"] == "cli.main:main"
    assert 'ENTRYPOINT ["fleet"]' in (ROOT / "deploy" / "Dockerfile").read_text()


def test_the_probe_knows_every_queue() -> None:
    from cli.commands.probe import QUEUES

    assert QUEUES == tuple(q.value for q in ALL_QUEUES)


def test_the_image_carries_every_package_the_fleet_command_imports() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}/"
    assert "COPY deploy/policy.yaml ./deploy/policy.yaml" in dockerfile
    assert f"FLEET_DATA_DIR={DATA_MOUNT}" in dockerfile


def test_the_image_policy_keeps_the_signing_key_on_its_own_volume() -> None:
    policy = load_policy(ROOT / "deploy" / "policy.yaml")
    assert policy.audit.signing_key_file.parent == Path(KEY_MOUNT)
    # Everything else the audit trail writes stays in the data directory.
    for written in (policy.audit.checkpoint_file, policy.audit.archive_dir):
        assert not written.is_absolute()


def test_every_service_has_a_health_check_or_runs_once() -> None:
    for name, svc in services().items():
        one_shot = svc.get("restart") == "no"
        assert one_shot or "healthcheck" in svc, f"{name}: no healthcheck and not one-shot"
        if one_shot:
            assert "healthcheck" not in svc or svc["healthcheck"].get("disable")


def test_every_fleet_command_and_health_check_is_a_real_entry_point() -> None:
    checked = 0
    for name, svc in fleet_services().items():
        resolve(svc["command"])  # raises on an unknown command or bad arguments
        test = svc.get("healthcheck", {}).get("test")
        if test:
            assert test[:2] == ["CMD", "fleet-probe"], f"{name}: health check is not a probe"
            resolve_script(test[1:])
        checked += 1
    assert checked >= len(ALL_QUEUES) + 5


def test_every_queue_has_one_worker_service_probing_its_own_queue() -> None:
    consumed = []
    for name, svc in fleet_services().items():
        if svc["command"][0] == "worker":
            queue = svc["command"][1]
            consumed.append(queue)
            assert svc["healthcheck"]["test"] == ["CMD", "fleet-probe", "worker", queue], name
            assert svc["restart"] == "unless-stopped"
    assert sorted(consumed) == sorted(q.value for q in ALL_QUEUES)


def test_the_stores_persist_and_redis_wants_a_password() -> None:
    svcs = services()
    redis_cmd = " ".join(svcs["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert '--requirepass "$$REDISCLI_AUTH"' in redis_cmd
    assert REQUIRED_VAR.fullmatch(svcs["redis"]["environment"]["REDISCLI_AUTH"])
    assert mounts(svcs["redis"]) == {"/data": ("redis-data", False)}
    assert mounts(svcs["postgres"]) == {"/var/lib/postgresql/data": ("postgres-data", False)}
    # The workers' broker URL carries that same password variable.
    env = svcs["worker-metrics"]["environment"]
    assert env["FLEET_REDIS__URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert svcs["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")


def test_migration_and_signing_key_run_once_before_what_needs_them() -> None:
    svcs = services()
    assert svcs["migrate"]["command"] == ["db", "upgrade"]
    assert svcs["init-audit-key"]["command"] == ["audit", "init-key", "--if-missing"]
    for name, svc in fleet_services().items():
        needs = svc.get("depends_on", {})
        if name in {"migrate", "init-audit-key", "sandbox"}:
            continue
        assert needs.get("migrate") == {"condition": "service_completed_successfully"}, name
        if KEY_MOUNT in mounts(svc):
            assert needs["init-audit-key"] == {"condition": "service_completed_successfully"}


def test_named_volumes_only_and_the_key_read_only_where_only_read() -> None:
    doc = compose()
    declared = set(doc["volumes"])
    used = set()
    for name, svc in doc["services"].items():
        for source, _ in mounts(svc).values():
            assert source in declared, f"{name}: {source} is a bind mount or undeclared"
            used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    svcs = services()
    key_users = {n: mounts(s)[KEY_MOUNT] for n, s in svcs.items() if KEY_MOUNT in mounts(s)}
    assert key_users == {
        "init-audit-key": ("audit-key", False),  # the one writer
        "worker-audit": ("audit-key", True),
        "api": ("audit-key", True),
    }
    data_users = {n for n, s in svcs.items() if mounts(s).get(DATA_MOUNT, ("",))[0] == "fleet-data"}
    assert data_users == {"worker-audit", "api"}
    for name, svc in fleet_services().items():
        assert svc["environment"]["FLEET_DATA_DIR"] == DATA_MOUNT, name


def test_nothing_secret_is_written_down() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, svc in services().items():
        env = svc.get("environment", {})
        for key, value in env.items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert REQUIRED_VAR.fullmatch(value), f"{name}: {key} must be ${{VAR:?why}}"
            if "://" in value and "@" in value:  # credentials inside a URL
                userinfo = value.split("://", 1)[1].split("@", 1)[0]
                password = userinfo.partition(":")[2]
                assert REQUIRED_VAR.fullmatch(password), f"{name}: {key} has a literal password"
    # A default (${VAR:-...}) is never a secret's.
    for match in ANY_VAR.finditer(text):
        if SECRET_NAME.search(match["name"]):
            assert match["rest"].startswith(":?"), f"{match['name']} has a default"


def test_every_fleet_service_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variables compose sets are fields Settings knows, with acceptable values."""
    for name, svc in fleet_services().items():
        env = {k: substituted(str(v)) for k, v in svc["environment"].items()}
        assert all(k.startswith("FLEET_") for k in env), name
        env["FLEET_POLICY_FILE"] = str(ROOT / "deploy" / "policy.yaml")  # /app in the image
        env["FLEET_GATEWAY__BASE_URL"] = "http://sandbox:8765"
        for key in [k for k in os.environ if k.startswith("FLEET_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        except Exception as exc:  # noqa: BLE001 - name the service in the failure
            raise AssertionError(f"{name}: {exc}") from exc
        assert settings.redis_url.startswith("redis://:xredis_password@redis:6379/")
        assert settings.sqlalchemy_url.startswith("postgresql+psycopg://fleet:")
    # The check above is not vacuous: a misspelt field is refused.
    monkeypatch.setenv("FLEET_WORKER__CONCURRENCYY", "2")
    with pytest.raises(ConfigError, match="CONCURRENCYY"):
        load_settings()


def test_the_sandbox_is_an_opt_in_demo_profile() -> None:
    svcs = services()
    assert svcs["sandbox"]["profiles"] == ["demo"]
    assert mounts(svcs["sandbox"]) == {DATA_MOUNT: ("sandbox-data", False)}
    for name, svc in svcs.items():
        assert "sandbox" not in svc.get("depends_on", {}), f"{name} cannot start without --profile"
        if name != "sandbox":
            assert "profiles" not in svc, f"{name} must run in every deployment"


def test_beat_is_one_and_only_one() -> None:
    beat = services()["beat"]
    assert beat["command"] == ["beat"]
    assert beat["deploy"] == {"replicas": 1}
