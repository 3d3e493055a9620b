"""Validate KubeRay manifests against KubeRay's published CRD schemas, with nothing outside the repo.

A CRD's `openAPIV3Schema` is a Kubernetes *structural* schema: close to JSON Schema, but objects
accept unknown fields unless told otherwise and a few keywords (`x-kubernetes-int-or-string`,
`nullable`) have no JSON Schema spelling. We translate it into a strict Draft 7 schema, so an
unknown or misspelt field fails here as it would under `kubectl apply --validate=strict`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "kuberay_crds"
_COPIED_KEYWORDS = ("enum", "required", "minimum", "maximum", "pattern", "minItems", "maxItems")


def strict_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One structural-schema node as a JSON Schema that refuses fields the CRD does not declare."""
    out: dict[str, Any] = {key: node[key] for key in _COPIED_KEYWORDS if key in node}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    if "properties" in node:
        out["properties"] = {name: strict_json_schema(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = strict_json_schema(node["items"])
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, for every version of every CRD in CRD_DIR."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_json_schema(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}  # the API server checks metadata
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def manifest_errors(path: Path) -> Iterator[str]:
    """One line per problem in a multi-document manifest file; nothing when every document passes."""
    for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
        if doc is None:
            continue
        where = f"{path.name}[{index}]"
        api, kind = doc.get("apiVersion"), doc.get("kind")
        if not api or not kind or not (doc.get("metadata") or {}).get("name"):
            yield f"{where}: needs apiVersion, kind and metadata.name"
            continue
        schema = crd_schemas().get((api, kind))
        if schema is None:
            if api.startswith("ray.io/"):
                yield f"{where}: {api} {kind} is not a KubeRay kind of these CRDs"
            continue  # core kinds (ConfigMap, Secret, ...) are not KubeRay's to check
        for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)):
            field = ".".join(str(part) for part in error.path) or "<root>"
            yield f"{where} {kind}: {field}: {error.message[:300]}"
