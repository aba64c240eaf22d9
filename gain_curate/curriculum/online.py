"""The angle term measured ONLINE: the same P / Q segment sums and formula as `score`, on the
prompts a trainer is running through its policy, with the weights it has at that step.

A trainer's generation already runs every prompt through the policy (the prefill before the
first sampled token), so the measurement rides along: a pre-hook on the input embeddings
sees the token ids of the first multi-token forward, a pre-hook on the chosen layer's MLP
sees its input, and the prompt rows are cut into P and Q exactly as `score` cuts them (chat
template text, character offsets, the question inside the last user turn). Rows are found
in the padded batch by their token ids (left- or right-padded); a row whose ids do not
match what the template renders is left unmeasured rather than guessed. Where the policy's
forward is not run by the trainer's process (vLLM generation), `measure` runs one no-grad
forward of the prompts up to the hooked layer instead.

    angles = OnlineAngles(model, tokenizer, layer=None, inter_weight=1.0)
    segs = angles.segments(conversations, questions)
    with angles.capture(segs) as cap:
        model.generate(...)                     # or any forward over the prompt tokens
    cap.values                                  # [(c_intra, c_inter, score) | None] per row
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from gain_curate.errors import ModelError
from gain_curate.inputs.conversation import Segments, render_chat, token_segments
from gain_curate.kernels.naive import naive_segment_unit_sums
from gain_curate.runtime.transformers_compat import decoder_layers
from gain_curate.runtime.truncated import resolve_layer
from gain_curate.scoring.angles import angle_scores

Values = list[tuple[float, float, float] | None]


class _Done(Exception):
    """Stops `measure`'s own forward once the hooked MLP input has been seen."""


class Capture:
    """One measurement: the first multi-token forward's ids and hooked hidden states."""

    def __init__(
        self, segments: Sequence[Segments | None], inter_weight: float, stop: bool
    ) -> None:
        self.segments, self.inter_weight, self.stop = list(segments), inter_weight, stop
        self.ids: torch.Tensor | None = None
        self.values: Values | None = None

    def on_ids(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if self.ids is None and isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] > 1:
            self.ids = x.detach()

    def on_hidden(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        h = args[0]
        if (
            self.values is None
            and self.ids is not None
            and tuple(h.shape[:2]) == tuple(self.ids.shape)
        ):
            self.values = self._measure(self.ids, h.detach())
            if self.stop:
                raise _Done

    def _measure(self, ids: torch.Tensor, h: torch.Tensor) -> Values:
        """(B, T) ids, (B, T, d) hidden -> per row (C_intra, C_inter, score) or None."""
        if len(self.segments) != ids.shape[0]:
            return [None] * len(self.segments)
        rows, spans = [], []
        for i, seg in enumerate(self.segments):
            start = None if seg is None else _find_row(ids[i], seg)
            spans.append(None if start is None else (i, start, seg))
        found = [s for s in spans if s is not None]
        if not found:
            return [None] * len(self.segments)
        for i, start, seg in found:
            rows.append(h[i, start : start + len(seg.input_ids)])
        offsets = [0]
        for _, _, seg in found:
            offsets += [offsets[-1] + seg.p, offsets[-1] + len(seg.input_ids)]
        sums = naive_segment_unit_sums(torch.cat(rows), torch.tensor(offsets)).view(
            len(found), 2, -1
        )
        p = torch.tensor([seg.p for _, _, seg in found])
        q = torch.tensor([seg.q for _, _, seg in found])
        a = angle_scores(sums[:, 1], q, sums[:, 0], p, self.inter_weight)
        out: Values = [None] * len(self.segments)
        for k, (i, _, _) in enumerate(found):
            out[i] = (a.c_intra[k].item(), a.c_inter[k].item(), a.score[k].item())
        return out


def _find_row(row: torch.Tensor, seg: Segments) -> int | None:
    """Where seg's ids sit in a padded row: left padding (conversation or P+Q ends the row)
    or right padding (the row starts with them); None when the tokens do not match."""
    want = torch.tensor(seg.input_ids, dtype=row.dtype, device=row.device)
    n, t = len(seg.input_ids), row.shape[0]
    for start in dict.fromkeys((t - seg.total_tokens, t - n, 0)):
        if 0 <= start <= t - n and torch.equal(row[start : start + n], want):
            return start
    return None


class OnlineAngles:
    """Hooks on a causal LM that measure C_intra / C_inter of the prompts it runs."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        layer: int | None = None,
        inter_weight: float = 1.0,
        render_kwargs: dict[str, Any] | None = None,
    ) -> None:
        layers = _layers(model)
        self.layer = resolve_layer(layer, len(layers))
        self.mlp = getattr(layers[self.layer], "mlp", None)
        if self.mlp is None:
            raise ModelError(f"layer {self.layer} of {type(model).__name__} has no `mlp` to hook")
        self.embed = model.get_input_embeddings()
        self.tokenizer, self.inter_weight = tokenizer, inter_weight
        self.render_kwargs = dict(render_kwargs or {})

    def segments(
        self, conversations: Sequence[list[dict[str, Any]]], questions: Sequence[str]
    ) -> list[Segments | None]:
        """Each prompt's P / Q cut, from the chat the trainer renders (None: not found)."""
        rendered = [
            render_chat(self.tokenizer, list(c), q, **self.render_kwargs)
            for c, q in zip(conversations, questions)
        ]
        return token_segments(self.tokenizer, rendered)

    @contextlib.contextmanager
    def capture(
        self, segments: Sequence[Segments | None], *, stop: bool = False
    ) -> Iterator[Capture]:
        cap = Capture(segments, self.inter_weight, stop)
        handles = [
            self.embed.register_forward_pre_hook(cap.on_ids),
            self.mlp.register_forward_pre_hook(cap.on_hidden),
        ]
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def measure(
        self, model: torch.nn.Module, segments: Sequence[Segments | None], pad_id: int
    ) -> Values:
        """One forward of the prompts' P + Q tokens (left-padded), stopped at the hooked MLP."""
        segs = list(segments)
        if not any(s is not None for s in segs):
            return [None] * len(segs)
        width = max(len(s.input_ids) for s in segs if s is not None)
        device = next(model.parameters()).device
        ids = torch.full((len(segs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(segs), width), dtype=torch.long)
        for i, s in enumerate(segs):
            if s is not None:
                ids[i, width - len(s.input_ids) :] = torch.tensor(s.input_ids)
                mask[i, width - len(s.input_ids) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        with self.capture(segs, stop=True) as cap, contextlib.suppress(_Done):
            model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
            )
        return cap.values or [None] * len(segs)


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM, a base model, or a PEFT-wrapped one."""
    for candidate in (
        model,
        getattr(model, "base_model", None),
        getattr(getattr(model, "base_model", None), "model", None),
    ):
        if candidate is None:
            continue
        with contextlib.suppress(ModelError):
            return decoder_layers(candidate)
    return decoder_layers(model)


def question_of(row: dict[str, Any]) -> str:
    """The question text of a trainer row: extra_info.question when it is a string that the
    last user turn contains, else that turn's whole content."""
    turns = [m for m in row.get("prompt") or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = turns[-1].get("content", "") if turns else ""
    q = (row.get("extra_info") or {}).get("question")
    return q if isinstance(q, str) and q.strip() and q.strip() in str(content) else str(content)
