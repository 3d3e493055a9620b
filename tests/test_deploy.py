"""deploy/: the KubeRay manifests validate against KubeRay's CRDs and agree with the code they run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.kuberay_schema import crd_schemas, manifest_errors

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_manifests_pass_kuberay_crd_validation() -> None:
    manifests = sorted(DEPLOY.glob("*.yaml"))
    assert {m.name for m in manifests} >= {
        "raycluster.yaml",
        "rayjob-train.yaml",
        "rayjob-train-gpu.yaml",
        "rayservice.yaml",
        "rayservice-gpu.yaml",
    }
    assert {kind for _, kind in crd_schemas()} == {"RayCluster", "RayJob", "RayService"}
    errors = [line for manifest in manifests for line in manifest_errors(manifest)]
    assert errors == []


def test_crd_validation_refuses_an_unknown_field_and_a_wrong_type(tmp_path: Path) -> None:
    cluster = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    cluster["spec"]["rayVersionTypo"] = "2.60.0"
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(cluster))
    errors = list(manifest_errors(broken))
    assert any("rayVersionTypo" in line for line in errors), errors
    assert any("workerGroupSpecs.0.replicas" in line for line in errors), errors


@pytest.mark.parametrize(
    ("manifest", "serve_config", "gpus"),
    [("rayservice.yaml", "serve-config.yaml", 0), ("rayservice-gpu.yaml", "serve-config-gpu.yaml", 1)],
)
def test_rayservice_embeds_the_serve_config_and_its_args_are_valid(
    manifest: str, serve_config: str, gpus: int
) -> None:
    from ulpt.console.deployment import build_app as build_console_app
    from ulpt_control.config import ControlConfig
    from ulpt_serving.config import ServeConfig

    service = next(d for d in _docs(manifest) if d["kind"] == "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    standalone = yaml.safe_load((DEPLOY / "serve" / serve_config).read_text())
    assert embedded == standalone
    app, control, pages = embedded["applications"]
    assert app["import_path"] == "ulpt_serving.app:build_app"
    # The control plane is its own application on the same port, under a prefix of its own.
    assert control["import_path"] == "ulpt_control.deployment:build_app"
    assert (app["route_prefix"], control["route_prefix"]) == ("/", "/control")
    assert ControlConfig.from_dict(control["args"]).max_upload_bytes == 64 << 20
    # The console's pages call the control plane where this manifest puts it.
    assert (pages["import_path"], pages["route_prefix"]) == ("ulpt.console.deployment:build_app", "/console")
    assert pages["args"]["api_base"] == control["route_prefix"]
    console_config = build_console_app(pages["args"])._bound_deployment.init_args[0]
    assert console_config.api_base == "/control"
    config = ServeConfig.from_dict(app["args"])
    assert config.auth is True
    assert config.num_gpus == gpus and config.dtype == ("bfloat16" if gpus else "auto")
    # A replica that asks for a GPU must find one in a worker group that has them.
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(_gpus_per_pod(group) == gpus for group in groups)


def _gpus_per_pod(group: dict) -> int:
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert container["image"] == ("ulpt:gpu" if "nvidia.com/gpu" in limits else "ulpt:cpu")
    return int(limits.get("nvidia.com/gpu", 0))


def test_gpu_rayjob_trains_on_gpu_workers_in_bf16() -> None:
    from ulpt.jobspec import JobSpec

    docs = _docs("rayjob-train-gpu.yaml")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "RayJob")
    spec = JobSpec.from_dict(yaml.safe_load(configmap["data"]["spec.yaml"]))
    assert spec.use_gpu and spec.dtype == "bfloat16"
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert _gpus_per_pod(group) == 1 and group["replicas"] >= spec.num_workers
    cpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpus >= spec.cpus_per_worker  # one worker (and its GPU) per pod fits
    volumes = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "spec", "configMap": {"name": configmap["metadata"]["name"]}} in volumes


def test_rayjob_runs_ulpt_train_on_its_configmap_spec_with_secrets_not_inline() -> None:
    from ulpt.jobspec import JobSpec

    docs = _docs("rayjob-train.yaml")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["spec"]["entrypoint"].startswith("ulpt train /etc/ulpt/spec.yaml")
    spec = JobSpec.from_dict(yaml.safe_load(configmap["data"]["spec.yaml"]))
    assert spec.tenant == "acme" and spec.dataset.group_by == "user_id"
    text = (DEPLOY / "rayjob-train.yaml").read_text()
    assert not re.search(r"(SECRET_ACCESS_KEY|postgresql\+psycopg)\S*\s*[:=]\s*\S", text), (
        "credentials inline"
    )


def test_dockerfile_copies_existing_paths_and_installs_the_project() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    sources = [
        src for line in dockerfile.splitlines() if line.startswith("COPY") for src in line.split()[1:-1]
    ]
    assert sources and all((ROOT / s).exists() for s in sources), sources
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    default_lock = re.search(r"^ARG LOCK=(\S+)", dockerfile, re.M)
    assert default_lock and default_lock.group(1) == "requirements/runtime.txt"
    assert '--require-hashes -r "${LOCK}"' in dockerfile  # the image runs what CI tested
    assert "torch" in dockerfile and "ULPT_HOME" in dockerfile


def test_deploy_guide_names_what_the_files_define() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for path in set(re.findall(r"`(deploy/[\w./-]+)`", guide)):
        assert (ROOT / path).exists(), path
    names = {d["metadata"]["name"] for f in DEPLOY.glob("*.yaml") for d in _docs(f.name)}
    assert names == {
        "ulpt",
        "ulpt-train-spec",
        "ulpt-train",
        "ulpt-serve",
        "ulpt-train-spec-gpu",
        "ulpt-train-gpu",
        "ulpt-serve-gpu",
    }
    assert all(f"`{name}`" in guide for name in names)
    manifests = "".join(p.read_text() for p in DEPLOY.glob("*.yaml"))
    assert "name: ulpt-secrets" in manifests and "`ulpt-secrets`" in guide
    for key in ("ULPT_CATALOG_URL", "ULPT_STORE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert f"`{key}`" in guide and key in (DEPLOY / "rayjob-train.yaml").read_text()
    for arg in re.findall(r"^ARG (\w+)", (DEPLOY / "Dockerfile").read_text(), re.M):
        assert f"`{arg}`" in guide, arg
    for image in set(re.findall(r"image: (\S+)", manifests)):
        assert f"`{image}`" in guide, image


def _ray_pods(doc: dict) -> list[dict]:
    """The pod specs of a manifest's Ray head and worker groups (RayCluster, RayJob or RayService)."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    groups = [cluster.get("headGroupSpec"), *cluster.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups if g]


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("*.yaml")))
def test_every_ray_pod_gives_the_object_store_shared_memory(name: str) -> None:
    """Without a memory-backed /dev/shm (64 MB by default in a pod) Ray's object store falls back to disk."""
    pods = [
        pod
        for doc in _docs(name)
        if doc["kind"] in ("RayCluster", "RayJob", "RayService")
        for pod in _ray_pods(doc)
    ]
    assert pods
    for pod in pods:
        memory = {
            v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"
        }
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/dev/shm") in memory, (name, container["name"])


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-train-gpu.yaml"])
def test_example_jobs_train_at_the_methods_measured_rate(name: str) -> None:
    """The paper's 0.01 left ULPT r=2 at chance (README, "Learning rate"): the examples use the default."""
    from ulpt.jobspec import JobSpec

    configmap = next(d for d in _docs(name) if d["kind"] == "ConfigMap")
    spec = JobSpec.from_dict(yaml.safe_load(configmap["data"]["spec.yaml"]))
    assert spec.train.lr is None and spec.train.preset != "paper"
