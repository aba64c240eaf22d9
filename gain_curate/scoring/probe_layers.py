"""Which layers `score --keep-states` keeps the prompt-end residual stream at, and the
names of the arrays it keeps (no torch here: the CLI, the prepare step and the merge read it).

`prompt_end@L<k>` is the residual stream after k decoder layers (Hugging Face's
`output_hidden_states[k]`, k in 1..n-1) at the last token of the whole rendered prompt,
generation prompt included: where generation starts. Layers 0..k-1 must run fully, and the
loaded model stops at the scored layer L's MLP, so k <= L.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Protocol

from gain_curate.errors import InputError

POOLED = ("question_mean", "last_token")  # prefill.pooled_states, at the scored layer
DEPTHS = (Fraction(1, 2), Fraction(2, 3), Fraction(5, 6))  # of the model's n layers


def feature_name(k: int) -> str:
    return f"prompt_end@L{k}"


def default_probe_layers(num_layers: int, layer: int) -> list[int]:
    """round(n/2), round(2n/3), round(5n/6) (halves up), clamped to 1..L, deduplicated:
    24 layers -> 12, 16, 20; 30 -> 15, 20, 25. Empty when L = 0 (no layer runs fully)."""
    picked = (int(num_layers * f + Fraction(1, 2)) for f in DEPTHS)
    return sorted({min(max(k, 1), layer) for k in picked}) if layer >= 1 else []


def parse_probe_layers(text: str) -> tuple[int, ...]:
    """'12,16,20' -> (12, 16, 20); anything else raises ValueError with the reason."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of layer numbers (e.g. 12,16,20)")
    return tuple(sorted({int(p) for p in parts}))


def resolve_probe_layers(requested: Any, num_layers: int, layer: int) -> list[int]:
    """The probe layers of a run: `requested` (--probe-layers) checked against the loaded
    model, or the defaults. A layer it cannot compute is one clear line."""
    if requested is None:
        return default_probe_layers(num_layers, layer)
    ks = sorted({int(k) for k in requested})
    bad = [k for k in ks if not 1 <= k <= layer]
    if bad or not ks:
        raise InputError(
            f"`probe_layers` {','.join(map(str, requested))}: a probe layer k is the residual "
            f"stream after k decoder layers, so 1 <= k <= {layer} (the scored layer; the model "
            f"has {num_layers}): choose layers in 1..{layer}, or a later `layer`"
        )
    return ks


class Layers(Protocol):
    """The model's depth and the scored layer (runtime.truncated.ModelShape, run.ModelInfo)."""

    layer: int
    num_layers: int


def run_probe_layers(cfg: Any, model: Layers) -> list[int]:
    """A prepared run's probe layers (empty without `keep_states`)."""
    if not cfg.keep_states:
        return []
    return resolve_probe_layers(cfg.probe_layers, int(model.num_layers), int(model.layer))


def state_features(cfg: Any, model: Layers) -> list[str]:
    """The (N, d) arrays a run keeps in states.npz, in their order (empty without states)."""
    if not cfg.keep_states:
        return []
    return [*POOLED, *(feature_name(k) for k in run_probe_layers(cfg, model))]


def states_key(cfg: Any, model: Layers) -> str | None:
    """What a finished part's states must hold (its marker records it): None without them."""
    return ",".join(state_features(cfg, model)) if cfg.keep_states else None
