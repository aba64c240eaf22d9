"""Where and how a scoring run computes, decided ONCE where the run starts (docs/design.md,
"Scale and the runtime").

    runtime = resolve_runtime(cfg, config, layer)     # the launcher, or a Ray GPU probe task
    work.claim(..., runtime=runtime)                  # written into OUT/.gain-curate/run.json
    Runtime.from_dict(run_json["runtime"])            # every rank, actor, merge, validate --run

Device kind, dtype, reduction kernel, token budget and placement are resolved here and
nowhere else. Every process that takes part in the run reads them from the run's own
files, so a merge on a CPU login node after a GPU Slurm array, or a Ray driver on a CPU
head with GPU actors, sees exactly what the scorers used. Which GPU index a process uses
is not part of the runtime: `worker_device` picks it per process from the launcher's
environment (LOCAL_RANK, CUDA_VISIBLE_DEVICES, the shard index).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

CPU_TOKEN_BUDGET = 2048  # on a CPU the budget tunes GEMM sizes, memory is not the limit
MAX_TOKEN_BUDGET = 1 << 16
MIN_TOKEN_BUDGET = 1 << 10


class RuntimeJSON(TypedDict):
    """A Runtime as JSON: run.json's and the manifest's `runtime`."""

    device: str
    dtype: str
    kernel: str
    token_budget: int
    placement: str
    hardware: str
    dtype_requested: str
    kernel_requested: str
    budget_from: str


@dataclass(frozen=True)
class Runtime:
    """What every worker of one run computes with; recorded in run.json and the manifest."""

    device: str  # device kind: "cpu" | "cuda" (each worker picks its own index)
    dtype: str  # "bfloat16" | "float16" | "float32"
    kernel: str  # "torch" | "triton"
    token_budget: int  # tokens per forward batch (padded rows x longest, + prefix KV on CUDA)
    placement: str  # "replica": the model whole on each worker; "split": over the node's GPUs
    hardware: str  # the CPU (model, matrix units) or GPU it was resolved on
    dtype_requested: str = "auto"
    kernel_requested: str = "auto"
    budget_from: str = "--token-budget"  # or how the budget was derived

    def to_dict(self) -> RuntimeJSON:
        """The runtime as run.json and the manifest write it (its fields, in order)."""
        return RuntimeJSON(**asdict(self))  # type: ignore[typeddict-item]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Runtime:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def device_kind(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; `cuda:1` -> cuda."""
    if device != "auto":
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_runtime(
    cfg: Any, model_config: Any, layer: int, *, device: str | None = None
) -> Runtime:
    """Resolve the run's runtime on this machine: `cfg` a ScoreConfig, `model_config` the
    model's transformers config, `layer` the hooked layer (0-based). `device` overrides the
    device the probe and memory query run on (a Ray GPU task passes `cuda`)."""
    import torch

    from gain_curate.runtime.hardware import device_label
    from gain_curate.runtime.kernel import resolve_kernel
    from gain_curate.runtime.models import resolve_dtype

    target = device or (cfg.device if cfg.device != "auto" else device_kind("auto"))
    dev = torch.device(target)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    dtype = resolve_dtype(cfg.dtype, dev)
    kernel = resolve_kernel(cfg.kernel, dev)
    weights = None
    if dev.type == "cuda":  # one meta model, for the placement and the budget both
        from gain_curate.runtime.placement import truncated_bytes

        weights = truncated_bytes(model_config, layer, dtype)
    placement = "replica"
    if dev.type == "cuda" and cfg.device == "auto" and torch.cuda.device_count() > 1:
        free, _ = torch.cuda.mem_get_info(dev)
        if weights > 0.8 * free:  # one replica split over the node's GPUs (placement.py)
            placement = "split"
    if cfg.token_budget is not None:
        budget, source = cfg.token_budget, "--token-budget"
    else:
        budget, source = auto_token_budget(model_config, layer, dtype, dev, weights=weights)
    return Runtime(
        device=dev.type,
        dtype=str(dtype).removeprefix("torch."),
        kernel=kernel,
        token_budget=budget,
        placement=placement,
        hardware=device_label(dev),
        dtype_requested=cfg.dtype,
        kernel_requested=cfg.kernel,
        budget_from=source,
    )


def activation_bytes_per_token(model_config: Any, layer: int, dtype: Any) -> int:
    """Peak bytes one token holds while the truncated model runs: the widest layer's
    activations (residual, norm, q/k/v, attention output, gate/up/act of the MLP) plus its
    KV in every layer up to the hooked one, doubled for the allocator and attention's
    workspace. From the model's shapes alone."""
    import torch

    text = getattr(model_config, "text_config", None) or model_config
    d = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(text, "intermediate_size", None) or 4 * d
    size = torch.tensor([], dtype=dtype).element_size()
    layer_peak = 4 * d + heads * head_dim + 2 * kv + 3 * inter
    cache = 2 * kv * (layer + 1)
    return 2 * size * (layer_peak + cache)


def auto_token_budget(
    model_config: Any, layer: int, dtype: Any, device: Any, *, weights: int | None = None
) -> tuple[int, str]:
    """Tokens per batch from the model's shapes and the device's free memory, rounded down
    to a power of two (so GPUs of one kind with slightly different free memory agree)."""
    import torch

    if torch.device(device).type != "cuda":
        return CPU_TOKEN_BUDGET, "cpu default (GEMM size, not memory)"
    from gain_curate.runtime.placement import truncated_bytes

    free, total = torch.cuda.mem_get_info(device)
    if weights is None:
        weights = truncated_bytes(model_config, layer, dtype)
    per_token = activation_bytes_per_token(model_config, layer, dtype)
    room = 0.85 * min(free, 0.95 * total) - weights
    raw = max(int(room // per_token), 1)
    budget = max(MIN_TOKEN_BUDGET, min(MAX_TOKEN_BUDGET, 1 << (raw.bit_length() - 1)))
    gib = 1 << 30
    why = (
        f"{free / gib:.1f} GiB free, weights {weights / gib:.1f} GiB, "
        f"{per_token / 1024:.0f} KiB per token"
    )
    return budget, why


def worker_device(
    kind: str,
    env: Mapping[str, str],
    gpus: int,
    shard: tuple[int, int] | None,
    explicit: str | None = None,
) -> tuple[str, str]:
    """The device this process scores on, and why: an explicit `--device cuda:K` wins; then
    LOCAL_RANK (torchrun, srun with one task per GPU); then, with several GPUs visible, the
    shard index modulo their count (a Slurm array's tasks on one node); else device 0 (one
    visible GPU: CUDA_VISIBLE_DEVICES already picked it)."""
    if kind != "cuda":
        return kind, "cpu"
    if explicit is not None and ":" in explicit:
        return explicit, "--device"
    if gpus <= 1:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        return "cuda:0", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "the only GPU"
    if "LOCAL_RANK" in env:
        local = int(env["LOCAL_RANK"])
        return f"cuda:{local % gpus}", f"LOCAL_RANK={local}"
    if shard is not None:
        return f"cuda:{shard[0] % gpus}", f"shard index {shard[0]} of {gpus} visible GPUs"
    return "cuda:0", "the first visible GPU"
