"""The subset of kustomize that deploy/kubernetes/ uses, so the tests can render the
overlays on a machine without kustomize: ``resources`` (files and directories),
``namespace``, ``labels`` (pairs, without selectors, optionally into pod templates),
``images`` (newName / newTag) and ``patches`` given by ``path`` as strategic merge
patches. Anything else in a kustomization is refused, so the manifests cannot drift
into what this renderer would silently ignore. When kubectl is installed the tests
also compare this rendering with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
# Kinds whose spec.template is a pod template (where includeTemplates puts labels).
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Strategic merge: lists of these keys merge item by item on "name"; others are replaced.
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes", "volumeMounts", "ports"}

Resource = dict[str, Any]


class UnsupportedKustomization(ValueError):
    pass


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Resource]:
    """The resources a kustomization directory produces, transformed in kustomize's order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{directory}: fields not rendered here: {sorted(unknown)}")
    out: list[Resource] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        out.extend(render(target) if target.is_dir() else load_documents(target))
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only path patches: {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            _apply_patch(out, patch, directory)
    if "namespace" in spec:
        for res in out:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = spec["namespace"]
    for label_set in spec.get("labels", []):
        if label_set.get("includeSelectors"):
            raise UnsupportedKustomization(f"{directory}: labels into selectors")
        for res in out:
            res["metadata"].setdefault("labels", {}).update(label_set["pairs"])
            if label_set.get("includeTemplates") and res["kind"] in WORKLOADS:
                template = res["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(label_set["pairs"])
    for image in spec.get("images", []):
        for res in out:
            for container in _containers(res):
                _retag(container, image)
    return out


def _apply_patch(resources: list[Resource], patch: Resource, directory: Path) -> None:
    key = (patch["kind"], patch["metadata"]["name"])
    matches = [r for r in resources if (r["kind"], r["metadata"]["name"]) == key]
    if len(matches) != 1:
        raise UnsupportedKustomization(f"{directory}: patch {key} matches {len(matches)}")
    merged = strategic_merge(matches[0], patch)
    matches[0].clear()
    matches[0].update(merged)


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)  # null deletes the field, as in kustomize
            else:
                out[k] = strategic_merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_BY_NAME:
        # Items only in the patch come first, in the patch's order, as kustomize puts them.
        merged = copy.deepcopy(base)
        added = []
        for item in patch:
            same = [i for i, existing in enumerate(merged) if existing.get("name") == item["name"]]
            if same:
                merged[same[0]] = strategic_merge(merged[same[0]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + merged
    return copy.deepcopy(patch)


def _containers(res: Resource) -> list[dict[str, Any]]:
    if res["kind"] not in WORKLOADS:
        return []
    pod = res["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _retag(container: dict[str, Any], image: dict[str, str]) -> None:
    name, _, tag = container["image"].partition(":")
    if name != image["name"]:
        return
    name = image.get("newName", name)
    tag = image.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name


def by_identity(resources: list[Resource]) -> dict[tuple[str, str, str], Resource]:
    """Resources keyed by (kind, namespace, name): kustomize's output order is its own."""
    out: dict[tuple[str, str, str], Resource] = {}
    for res in resources:
        meta = res["metadata"]
        ident = (res["kind"], meta.get("namespace", ""), meta["name"])
        assert ident not in out, f"two resources are {ident}"
        out[ident] = res
    return out
