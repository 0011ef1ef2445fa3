"""A small kustomize, for machines without `kubectl kustomize` (deploy/check.sh falls back).

Debian's kubectl is too old to build components, so where no recent kubectl exists this
builds deploy/'s kustomizations itself. It supports exactly what those use: resources
(files and directories), components, namespace, labels (without selectors),
configMapGenerator/secretGenerator (envs, literals, files; behavior create/merge;
generatorOptions), patches (strategic merge, inline or from a file, with a target
selector; `$patch: delete`; null deletes a key), images, and kustomize's content-hash
name suffix with references in pod templates rewritten. Anything else is refused loudly
rather than ignored. tests/test_deploy.py checks its output equals kubectl's.

Usage: python deploy/kustomize_build.py DIR > out.yaml
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

_SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "images",
}
# Strategic-merge keys of the list fields these manifests patch (from the Kubernetes API).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
# Kinds without a namespace that could appear here.
_CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
# kustomize's "legacy" output order.
_ORDER = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
    "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass",
    "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob",
    "PodDisruptionBudget",
]  # fmt: skip


class KustomizeError(Exception):
    pass


def _load_yaml_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(root: Path) -> Obj:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).is_file():
            doc = yaml.safe_load((root / name).read_text()) or {}
            unknown = set(doc) - _SUPPORTED
            if unknown:
                raise KustomizeError(f"{root}: unsupported fields {sorted(unknown)}")
            return dict(doc)
    raise KustomizeError(f"{root}: no kustomization.yaml")


def _gvk(obj: Obj) -> tuple[str, str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return group, version, obj["kind"]


def _hash_suffix(obj: Obj) -> str:
    """kustomize's name suffix: sha256 of a canonical JSON, then its letter swap.

    kustomize looks the name up with a path its lookup does not split, so it always hashes
    an empty name; doing the same keeps the suffixes equal to kubectl's.
    """
    doc: Obj = {"kind": obj["kind"], "name": "", "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        doc["type"] = obj.get("type", "Opaque")
    if obj.get("binaryData"):
        doc["binaryData"] = obj["binaryData"]
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        canonical = canonical.replace(char, escape)  # as Go's encoding/json writes them
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _base64(text: str) -> str:
    """Base64 as kustomize writes it: 70-character lines, each ended, once past one line."""
    encoded = base64.b64encode(text.encode()).decode()
    if len(encoded) < 70:
        return encoded
    return "".join(encoded[i : i + 70] + "\n" for i in range(0, len(encoded), 70))


def _generator_data(root: Path, spec: Obj) -> dict[str, str]:
    data: dict[str, str] = {}
    for env_file in spec.get("envs", []):
        for line in (root / env_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for entry in spec.get("files", []):
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = Path(entry).name, entry
        data[key] = (root / path).read_text()
    unknown = set(spec) - {"name", "behavior", "envs", "literals", "files", "type", "options"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported generator fields {sorted(unknown)}")
    return data


def _generate(root: Path, kust: Obj, resources: list[Obj]) -> None:
    options = kust.get("generatorOptions", {})
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in kust.get(key, []):
            data = _generator_data(root, spec)
            if kind == "Secret":
                data = {k: _base64(v) for k, v in data.items()}
            behavior = spec.get("behavior", "create")
            if behavior == "merge":
                target = _find(resources, kind, spec["name"])
                if target is None or "_generated" not in target:
                    raise KustomizeError(f"{root}: merge into unknown {kind} {spec['name']}")
                target.setdefault("data", {}).update(data)
                continue
            if behavior != "create":
                raise KustomizeError(f"{root}: unsupported behavior {behavior}")
            obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
            if options.get("labels"):
                obj["metadata"]["labels"] = dict(options["labels"])
            if options.get("annotations"):
                obj["metadata"]["annotations"] = dict(options["annotations"])
            obj["data"] = data
            if kind == "Secret":
                obj["type"] = spec.get("type", "Opaque")
            obj["_generated"] = not options.get("disableNameSuffixHash", False)
            resources.append(obj)


def _find(resources: list[Obj], kind: str, name: str) -> Obj | None:
    for obj in resources:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge of `patch` into `base` (for the fields these manifests patch)."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"unsupported patch directive {key}")
        if value is None:
            out.pop(key, None)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, _MERGE_KEYS[key])
        elif key in out:
            out[key] = _merge(out[key], value)
        else:
            out[key] = _merge({}, value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def _merge_list(base: list[Obj], patch: list[Obj], key: str) -> list[Obj]:
    out = list(base)
    for item in patch:
        index = next((i for i, b in enumerate(out) if b.get(key) == item.get(key)), None)
        if index is None:
            out.append(_merge({}, item))
        else:
            out[index] = _merge(out[index], item)
    return out


def _matches(obj: Obj, target: Obj) -> bool:
    group, version, kind = _gvk(obj)
    unknown = set(target) - {"group", "version", "kind", "name"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    wanted = {"group": group, "version": version, "kind": kind, "name": obj["metadata"]["name"]}
    return all(wanted[k] == v for k, v in target.items())


def _patch(root: Path, kust: Obj, resources: list[Obj]) -> list[Obj]:
    for entry in kust.get("patches", []):
        text = (root / entry["path"]).read_text() if "path" in entry else entry["patch"]
        patch = yaml.safe_load(text)
        target = entry.get("target")
        if target is None:
            target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        delete = patch.pop("$patch", None) == "delete"
        hits = [obj for obj in resources if _matches(obj, target)]
        if not hits:
            raise KustomizeError(f"{root}: patch target {target} matches nothing")
        if delete:
            resources = [obj for obj in resources if not any(obj is hit for hit in hits)]
            continue
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")}
        meta = {k: v for k, v in patch["metadata"].items() if k != "name"}
        for hit in hits:
            merged = _merge(hit, {**body, **({"metadata": meta} if meta else {})})
            hit.clear()
            hit.update(merged)
    return resources


def _pod_specs(obj: Obj) -> list[Obj]:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    return []


def _images(kust: Obj, resources: list[Obj]) -> None:
    for image in kust.get("images", []):
        for obj in resources:
            for spec in _pod_specs(obj):
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    name, _, _tag = container["image"].partition(":")
                    if name == image["name"]:
                        new = image.get("newName", name)
                        tag = image.get("newTag")
                        container["image"] = f"{new}:{tag}" if tag else new


def _labels(kust: Obj, resources: list[Obj]) -> None:
    for entry in kust.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError("labels with selectors or templates are not supported")
        for obj in resources:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])


def build(root: Path, *, component_input: list[Obj] | None = None) -> list[Obj]:
    """Resources of one kustomization (or component applied to `component_input`)."""
    kust = _kustomization(root)
    is_component = kust.get("kind") == "Component"
    if is_component != (component_input is not None):
        raise KustomizeError(f"{root}: Component used as a resource or the reverse")
    resources = component_input if component_input is not None else []
    for entry in kust.get("resources", []):
        path = root / entry
        resources += build(path) if path.is_dir() else _load_yaml_docs(path)
    for entry in kust.get("components", []):
        resources = build(root / entry, component_input=resources)
    _generate(root, kust, resources)
    resources = _patch(root, kust, resources)
    if "namespace" in kust:
        for obj in resources:
            if obj["kind"] not in _CLUSTER_KINDS:
                obj["metadata"]["namespace"] = kust["namespace"]
    _labels(kust, resources)
    _images(kust, resources)
    return resources


def _rename_references(resources: list[Obj], renames: dict[tuple[str, str], str]) -> None:
    def new(kind: str, name: str) -> str:
        return renames.get((kind, name), name)

    for obj in resources:
        for spec in _pod_specs(obj):
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    volume["configMap"]["name"] = new("ConfigMap", volume["configMap"]["name"])
                if "secret" in volume:
                    secret = volume["secret"]
                    secret["secretName"] = new("Secret", secret["secretName"])
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        ref = source["configMapRef"]
                        ref["name"] = new("ConfigMap", ref["name"])
                    if "secretRef" in source:
                        source["secretRef"]["name"] = new("Secret", source["secretRef"]["name"])
                for env in container.get("env", []):
                    value_from = env.get("valueFrom", {})
                    if "configMapKeyRef" in value_from:
                        ref = value_from["configMapKeyRef"]
                        ref["name"] = new("ConfigMap", ref["name"])
                    if "secretKeyRef" in value_from:
                        ref = value_from["secretKeyRef"]
                        ref["name"] = new("Secret", ref["name"])


def finish(resources: list[Obj]) -> list[Obj]:
    """Hash-suffix generated names, rewrite references, order as kustomize does."""
    renames: dict[tuple[str, str], str] = {}
    for obj in resources:
        if obj.pop("_generated", False):
            old = obj["metadata"]["name"]
            obj["metadata"]["name"] = f"{old}-{_hash_suffix(obj)}"
            renames[(obj["kind"], old)] = obj["metadata"]["name"]
    _rename_references(resources, renames)

    def order(obj: Obj) -> tuple[int, str, str]:
        kind = obj["kind"]
        rank = _ORDER.index(kind) if kind in _ORDER else len(_ORDER)
        return rank, kind if rank == len(_ORDER) else "", obj["metadata"]["name"]

    return sorted(resources, key=order)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        resources = finish(build(Path(argv[0])))
    except (KustomizeError, OSError, KeyError, yaml.YAMLError) as exc:
        print(f"kustomize_build: {exc}", file=sys.stderr)
        return 1
    print(yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
