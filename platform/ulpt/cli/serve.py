"""`ulpt serve`: the OpenAI-compatible Ray Serve endpoint, in the foreground until Ctrl-C."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Annotated, cast

import typer

from ulpt.cli.catalog_options import CatalogUrlOption, HomeOption, StoreUrlOption, TenantOption
from ulpt.cli.output import console
from ulpt.config import ulpt_home
from ulpt.errors import SpecError, UlptError

if TYPE_CHECKING:
    from ulpt_serving.config import EngineName, ServeConfig
    from ulpt_serving.launch import Companion


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless keys are required.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    model: Annotated[str, typer.Option(help="Base model: a known name or a model folder.")] = "smollm2-135m",
    served_model_name: Annotated[
        str | None, typer.Option(help="Name of the base model in requests (default: --model).")
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Serve --tenant without API keys (only on a loopback --host)."),
    ] = False,
    tenant: TenantOption = "default",
    replicas: Annotated[int, typer.Option(help="Model replicas (each runs the base model once).")] = 1,
    share_weights: Annotated[
        bool,
        typer.Option(
            help="Replicas on a node map one read-only copy of the base from Ray's object store "
            "(--no-share-weights: each loads its own from disk)."
        ),
    ] = True,
    max_batch_size: Annotated[int, typer.Option(help="Rows decoded together, across adapters.")] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits to fill (finite, 0 to 60000).")
    ] = 10.0,
    num_cpus: Annotated[float, typer.Option(help="CPUs Ray reserves per replica.")] = 1.0,
    num_gpus: Annotated[
        float, typer.Option(help="GPUs Ray reserves per replica (0 to 1e6); the model runs on CUDA when > 0.")
    ] = 0.0,
    vllm_gpu_memory_share: Annotated[
        float | None,
        typer.Option(
            help="Share of its GPU's memory a replica's vLLM claims (0 to 1; default 0.9 of --num-gpus)."
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="Base model dtype: auto (bfloat16 on a GPU, else float32), float32, bfloat16, float16."
        ),
    ] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads per replica.")] = None,
    control: Annotated[
        bool,
        typer.Option(
            help="Also serve the control plane (jobs, files, catalog, keys, OpenAI fine-tuning) at "
            "/control on the same port, as its own Serve application; it always requires API keys."
        ),
    ] = True,
    console_pages: Annotated[
        bool,
        typer.Option(
            "--console/--no-console",
            help="Also serve the web console at /console on the same port (needs the control plane).",
        ),
    ] = True,
    engine: Annotated[
        str,
        typer.Option(
            help="What decodes: vllm (continuous batching; decoder-only models, needs the vllm extra), "
            "native (ulpt's own batches, any model) or auto (vllm where installed and the model fits)."
        ),
    ] = "auto",
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Join this Ray cluster instead of starting one.")
    ] = None,
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Serve adapters over an OpenAI-compatible HTTP API; requests for different adapters share batches.

    Clients send `Authorization: Bearer KEY` (keys from `ulpt keys create`), or nothing with
    --no-auth on 127.0.0.1. Keys are checked in the catalog on every request: a revoked key is
    refused from the next request on. `model` in a request is an adapter (name, name:version, alias,
    tenant/name for public adapters) or the base model's name.
    """
    from ulpt.models.precision import check_dtype_name
    from ulpt.models.registry import resolve_model_path
    from ulpt_serving.config import ENGINES, ServeConfig
    from ulpt_serving.launch import serve_forever

    # Checked under the names typed here (the config's fields are named and scaled differently).
    _check_finite("--batch-wait-ms", batch_wait_ms, 60_000)
    _check_finite("--num-cpus", num_cpus, 1e6)
    _check_finite("--num-gpus", num_gpus, 1e6)
    if vllm_gpu_memory_share is not None and not 0 < vllm_gpu_memory_share <= 1:  # NaN fails too
        raise SpecError(f"--vllm-gpu-memory-share must be a number in (0, 1], got {vllm_gpu_memory_share}")
    check_dtype_name("--dtype", dtype)
    if engine not in ENGINES:
        raise SpecError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    config = ServeConfig(
        engine=cast("EngineName", engine),
        model=model,
        served_model_name=served_model_name or model,
        home=str((home or ulpt_home()).expanduser().absolute()),
        catalog_url=catalog_url,
        store_url=store_url,
        auth=not no_auth,
        tenant=tenant,
        host=host,
        port=port,
        num_replicas=replicas,
        share_weights=share_weights,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        vllm_gpu_memory_utilization=vllm_gpu_memory_share,
        dtype=dtype,
        torch_threads=threads,
        max_batch_size=max_batch_size,
        max_ongoing_requests=max(64, 2 * max_batch_size),
        batch_wait_timeout_s=batch_wait_ms / 1000,
    )
    # Resolved here, once, with progress on this terminal (a known name may be converted on first use);
    # replicas then just load a folder.
    config = config.model_copy(update={"model": str(resolve_model_path(model).absolute())})
    _check_model_folder(model, config.model)
    _check_catalog(config)
    console.print(f"starting Ray Serve for {config.base_model_name} on {host}:{port} ...", highlight=False)
    companions = [control_plane(config)] if control else []
    if control and console_pages:
        companions.append(web_console(config, companions[0].route_prefix))
    serve_forever(config, address=ray_address, companions=companions)


def control_plane(config: ServeConfig) -> Companion:
    """The control plane over the inference app's catalog and store, allowed to train its base model;
    its job drivers run on the Ray its replica is on."""
    from ulpt_control import ControlConfig
    from ulpt_control.deployment import build_application
    from ulpt_serving.launch import Companion

    control = ControlConfig(
        home=config.home,
        catalog_url=config.catalog_url,
        store_url=config.store_url,
        base_models=(config.model, config.base_model_name),
        # `ulpt serve` trains on the Ray it starts here: this machine is the cluster's one node type
        max_cpus_per_worker=os.cpu_count() or 1,
        gpu_workers=config.num_gpus > 0,
    )
    return Companion(build_application(control), control.app_name, control.route_prefix)


def web_console(config: ServeConfig, control_prefix: str) -> Companion:
    """The console's pages, calling the control plane at `control_prefix` and the inference routes."""
    from ulpt.console import ConsoleConfig
    from ulpt.console.deployment import APP_NAME, ROUTE_PREFIX, build_application
    from ulpt_serving.launch import Companion

    pages = ConsoleConfig(api_base=control_prefix, inference_base=config.route_prefix.rstrip("/"))
    return Companion(build_application(pages), APP_NAME, ROUTE_PREFIX)


def _check_finite(option: str, value: float, high: float) -> None:
    """Checked under the option's name before the config scales it: a NaN wait or CPU count gave a
    healthy-looking server that never answered."""
    if not math.isfinite(value):
        raise SpecError(f"{option} must be a finite number, got {value}")
    if not 0 <= value <= high:
        raise SpecError(f"{option} must be a number in [0, {high:g}], got {value}")


def _check_model_folder(given: str, folder: str) -> None:
    """A folder without a model config fails here in a second, not in a replica after Ray has started
    (where the cause ends up in the controller's log)."""
    from pathlib import Path

    from transformers import AutoConfig

    if not (Path(folder) / "config.json").is_file():
        raise UlptError(f"--model {given}: not a model folder (no config.json in {folder})")
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UlptError(f"--model {given}: not a loadable model folder ({reason})") from None


def _check_catalog(config: ServeConfig) -> None:
    """Open the catalog the replicas will use (reachable, schema current): one line if it is not."""
    from ulpt.sdk import Client

    with Client(home=config.home, catalog_url=config.catalog_url, store_url=config.store_url) as client:
        client.catalog.check_schema()
