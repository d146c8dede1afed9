"""deploy/kubernetes: each overlay rendered here (tests/support/kustomize.py, and compared
with `kubectl kustomize` where kubectl exists), every resource validated offline against
the Kubernetes schemas (kubernetes-validate, strict) or KEDA's (tests/support/schemas),
and the shape the issue asks for checked on what a cluster would receive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config.settings import Settings
from tests.support.entrypoints import resolve, resolve_script
from tests.support.kustomize import Resource, by_identity, load_documents, render
from workers.queues import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The oldest release the manifests promise to work on (policy/v1 PDBs, batch/v1 Jobs).
KUBERNETES_VERSION = "1.30.0"
SCHEMAS = ROOT / "tests" / "support" / "schemas"
KEDA_SCHEMAS = {
    "ScaledObject": SCHEMAS / "keda-scaledobject-v1alpha1.json",
    "TriggerAuthentication": SCHEMAS / "keda-triggerauthentication-v1alpha1.json",
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Resource]]:
    return request.param, render(K8S / "overlays" / request.param)


def kinds(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_spec(res: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = res["spec"]["template"]["spec"]
    return spec


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in ("Deployment", "Job")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_there_are_staging_and_production_overlays() -> None:
    assert {"staging", "production"} <= set(OVERLAYS)


def test_the_rendering_here_is_kustomizes_own() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: only this repository's renderer was run")
    for name in OVERLAYS:
        done = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        theirs = by_identity([d for d in yaml.safe_load_all(done.stdout) if d])
        ours = by_identity(render(K8S / "overlays" / name))
        assert ours.keys() == theirs.keys()
        for ident, res in ours.items():
            assert res == theirs[ident], f"{name}: {ident} renders differently"


def test_every_resource_matches_its_schema(overlay: tuple[str, list[Resource]]) -> None:
    name, resources = overlay
    for res in resources:
        ident = f"{name}: {res['kind']}/{res['metadata']['name']}"
        if res["kind"] in KEDA_SCHEMAS:
            schema = json.loads(KEDA_SCHEMAS[res["kind"]].read_text())
            try:
                jsonschema.Draft202012Validator(schema).validate(res)
            except jsonschema.ValidationError as exc:
                raise AssertionError(f"{ident}: {exc.message} at {list(exc.path)}") from exc
        else:
            try:
                kubernetes_validate.validate(res, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{ident}: {exc.message} at {list(exc.path)}") from exc


def test_the_keda_schema_refuses_what_keda_would() -> None:
    """The hand-written schema is not vacuous: the usual mistakes fail it."""
    schema = json.loads(KEDA_SCHEMAS["ScaledObject"].read_text())
    resources = render(K8S / "overlays" / OVERLAYS[0])
    good = next(iter(kinds(resources, "ScaledObject").values()))
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(good)
    unquoted = json.loads(json.dumps(good))
    unquoted["spec"]["triggers"][0]["metadata"]["listLength"] = 5
    typo = json.loads(json.dumps(good))
    typo["spec"]["triggers"][0]["metadata"]["listname"] = "metrics"
    stray = json.loads(json.dumps(good))
    stray["spec"]["maxReplicas"] = 3
    for bad in (unquoted, typo, stray):
        assert not validator.is_valid(bad)


def test_a_deployment_and_a_keda_scaler_per_queue(overlay: tuple[str, list[Resource]]) -> None:
    name, resources = overlay
    deployments = kinds(resources, "Deployment")
    scalers = kinds(resources, "ScaledObject")
    auths = kinds(resources, "TriggerAuthentication")
    for queue in ALL_QUEUES:
        workers = [
            d for d in deployments.values() if pod_spec(d)["containers"][0]["args"][0] == "worker"
            and pod_spec(d)["containers"][0]["args"][1] == queue.value
        ]  # fmt: skip
        assert len(workers) == 1, f"{name}: {len(workers)} Deployments for {queue}"
        deployment = workers[0]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        targeting = [s for s in scalers.values() if s["spec"]["scaleTargetRef"]["name"]
                     == deployment["metadata"]["name"]]  # fmt: skip
        assert len(targeting) == 1, f"{name}: {queue} has {len(targeting)} ScaledObjects"
        spec = targeting[0]["spec"]
        assert spec["minReplicaCount"] >= 1, "a queue's heartbeat needs a consumer"
        assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue.value
        # The address and the password by reference, never written down.
        assert "address" not in trigger["metadata"] and "password" not in trigger["metadata"]
        env = {e["name"]: e for e in pod_spec(deployment)["containers"][0]["env"]}
        address = env[trigger["metadata"]["addressFromEnv"]]
        assert address["valueFrom"]["secretKeyRef"]["key"] == "redis-address"
        auth = auths[trigger["authenticationRef"]["name"]]
        (password,) = auth["spec"]["secretTargetRef"]
        assert (password["parameter"], password["key"]) == ("password", "redis-password")
    assert len(scalers) == len(ALL_QUEUES)


def test_beat_is_exactly_one_scheduler(overlay: tuple[str, list[Resource]]) -> None:
    _, resources = overlay
    beats = [d for d in kinds(resources, "Deployment").values()
             if pod_spec(d)["containers"][0]["args"] == ["beat"]]  # fmt: skip
    assert len(beats) == 1
    beat = beats[0]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert "volumes" not in pod_spec(beat), "beat's state is in Redis, beside its lock"
    scaled = {
        s["spec"]["scaleTargetRef"]["name"] for s in kinds(resources, "ScaledObject").values()
    }
    assert beat["metadata"]["name"] not in scaled
    assert not kinds(resources, "HorizontalPodAutoscaler")


def test_the_api_is_served_and_the_migration_is_a_job(
    overlay: tuple[str, list[Resource]],
) -> None:
    _, resources = overlay
    api = kinds(resources, "Deployment")["fleet-api"]
    container = pod_spec(api)["containers"][0]
    assert container["args"] == ["api"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = kinds(resources, "Service")["fleet-api"]
    assert selects(service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLEET_API__HOST"] == "0.0.0.0"
    (job,) = kinds(resources, "Job").values()
    assert pod_spec(job)["containers"][0]["args"] == ["db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] == "OnFailure"


def test_disruption_budgets_cover_the_api_and_every_worker(
    overlay: tuple[str, list[Resource]],
) -> None:
    _, resources = overlay
    budgets = list(kinds(resources, "PodDisruptionBudget").values())
    for deployment in kinds(resources, "Deployment").values():
        args = pod_spec(deployment)["containers"][0]["args"]
        if args[0] not in ("worker", "api"):
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, f"{deployment['metadata']['name']}: {len(covering)} budgets"
        spec = covering[0]["spec"]
        if args[0] == "api":
            assert spec["minAvailable"] < deployment["spec"]["replicas"], "a drain must proceed"
        else:
            assert spec == {**spec, "maxUnavailable": 1}


def test_secrets_by_reference_only(overlay: tuple[str, list[Resource]]) -> None:
    _, resources = overlay
    assert not kinds(resources, "Secret"), "no Secret with values is rendered"
    example = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in load_documents(K8S / "base" / "secret.example.yaml")
    }
    for res in workloads(resources):
        pod = pod_spec(res)
        for container in pod["containers"]:
            for env in container["env"]:
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in example[ref["name"]], f"{ref} is not in the example"
                else:
                    secretish = ("PASSWORD", "TOKEN", "KEY", "SECRET", "REDIS__URL", "DATABASE")
                    assert not any(s in env["name"] for s in secretish), env["name"]
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in example
    for auth in kinds(resources, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in example[ref["name"]]
    for config in kinds(resources, "ConfigMap").values():
        for key in config["data"]:
            assert not any(s in key for s in ("PASSWORD", "TOKEN", "SECRET", "ADMIN_KEY"))


def test_the_example_secret_is_documentation_not_a_resource() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        assert "secret.example.yaml" not in spec.get("resources", []), kustomization
    for doc in load_documents(K8S / "base" / "secret.example.yaml"):
        assert all("REPLACE_ME" in v or "example" in v for v in doc["stringData"].values())


def test_the_signing_key_is_mounted_read_only_where_it_is_read(
    overlay: tuple[str, list[Resource]],
) -> None:
    _, resources = overlay
    readers = {}
    for res in workloads(resources):
        pod = pod_spec(res)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                source = volumes[mount["name"]]
                if "secret" in source:
                    readers[res["metadata"]["name"]] = mount
                    assert mount["readOnly"] is True
                    assert mount["mountPath"] == "/var/lib/fleet/keys"
                else:
                    claim = source["persistentVolumeClaim"]["claimName"]
                    assert kinds(resources, "PersistentVolumeClaim")[claim]
                    assert mount["mountPath"] == "/var/lib/fleet/data"
    assert set(readers) == {"fleet-api", "fleet-worker-audit"}


def test_every_container_runs_a_real_command_with_probes_and_requests(
    overlay: tuple[str, list[Resource]],
) -> None:
    name, resources = overlay
    for res in workloads(resources):
        for container in pod_spec(res)["containers"]:
            ident = f"{name}: {res['metadata']['name']}"
            resolve(container["args"])
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), ident
            assert "memory" in container["resources"]["limits"], ident
            if res["kind"] == "Job":
                continue
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{ident}: no {probe}"
                command = container[probe].get("exec", {}).get("command")
                if command:
                    resolve_script(command)
            if container["args"][0] == "worker":
                queue = container["args"][1]
                assert container["livenessProbe"]["exec"]["command"][-1] == queue, ident
                # A warm shutdown may finish the task at hand: the grace is the hard limit.
                grace = pod_spec(res)["terminationGracePeriodSeconds"]
                assert grace >= Settings().worker.time_limit_s, ident


def test_every_container_environment_is_valid_settings(
    overlay: tuple[str, list[Resource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the ConfigMap and the env lists set are fields Settings knows, with acceptable
    values (secrets stand in as placeholders)."""
    name, resources = overlay
    configs = kinds(resources, "ConfigMap")
    placeholders = {
        "redis-url": "redis://:pw@redis:6379/0",
        "database-url": "postgresql+psycopg://fleet:pw@postgres:5432/fleet",
    }
    for res in workloads(resources):
        for container in pod_spec(res)["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(configs[source["configMapRef"]["name"]]["data"])
            for var in container["env"]:
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                env[var["name"]] = placeholders.get(ref["key"], "x") if ref else var["value"]
            env["FLEET_POLICY_FILE"] = str(ROOT / "deploy" / "policy.yaml")  # /app in the image
            for key in [k for k in os.environ if k.startswith("FLEET_")]:
                monkeypatch.delenv(key)
            for key, value in env.items():
                if key.startswith("FLEET_"):
                    monkeypatch.setenv(key, value)
            try:
                settings = Settings(_env_file=None)  # type: ignore[call-arg]
            except Exception as exc:  # noqa: BLE001 - name the container in the failure
                raise AssertionError(f"{name}: {res['metadata']['name']}: {exc}") from exc
            assert settings.environment == name
            assert str(settings.data_dir) == "/var/lib/fleet/data"


def test_overlays_pin_the_image_and_name_their_gateway(
    overlay: tuple[str, list[Resource]],
) -> None:
    name, resources = overlay
    (namespace,) = kinds(resources, "Namespace")
    assert namespace == f"fleet-{name}"
    for res in resources:
        if res["kind"] != "Namespace":
            assert res["metadata"]["namespace"] == namespace
        assert res["metadata"]["labels"]["fleet.environment"] == name
    for res in workloads(resources):
        for container in pod_spec(res)["containers"]:
            assert container["image"].startswith("registry.example/fleet-commander:")
    gateway = kinds(resources, "ConfigMap")["fleet-config"]["data"]["FLEET_GATEWAY__BASE_URL"]
    assert gateway.startswith("https://") and "invalid" not in gateway
