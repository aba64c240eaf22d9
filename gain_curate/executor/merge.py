"""The last step of a scoring run: rank every finished part together, write the public
shards, the pooled states (`keep_states`: OUT/states.npz), then the manifest (written last,
atomically; manifest.py builds it). `gain-curate merge OUT` runs it alone after --shard
workers.

    merge(prep, started)
      rank_parts        the parts' scores onto every input row (duplicates copied), ranked
      render            the conversations the trainer reads (recorded.run_conversations)
      write_ranked      the shards, one Arrow schema (scoring.table)
      write_states      OUT/states.npz from the parts' states, or none
      manifest.py       build_manifest + what only the merge knows, then write it
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate import progress
from gain_curate.executor.manifest import build_manifest, count, prefill_totals, run_manifest
from gain_curate.executor.prepared import Prepared, load_prepared
from gain_curate.executor.recorded import run_conversations
from gain_curate.executor.workdir import WorkDir
from gain_curate.runfolder import store
from gain_curate.runfolder.run import ModelInfo, Shard, StatesInfo
from gain_curate.scoring.config import ScoreResult
from gain_curate.scoring.probe_layers import POOLED, feature_name, run_probe_layers, states_key
from gain_curate.scoring.record import PrefillStats, RankedRows, ScoredRows
from gain_curate.scoring.table import TableInputs, build_table, rank_order


@dataclass(frozen=True)
class Rendered:
    """The run's template and, per input row, its conversations (None: no question)."""

    template: Any  # inputs.template.ScoringTemplate
    convs: list[Any]  # inputs.conversation.Conversation | None
    longest: int  # tokens of the longest rendered prompt (0: none)


def merge(prep: Prepared, started: float) -> ScoreResult:
    """Rank every part together and write the public shards, then the manifest. Reads only
    the run's own files: the prepared rows and input, the parts and their markers.
    started: time.perf_counter() when the command began; the manifest's `seconds` run from
    it to the manifest, the merge included. Its steps show their progress through
    gain_curate.progress (the command's bars, or log lines)."""
    cfg = prep.cfg
    work = WorkDir(cfg.out)
    ranked, part_stats = rank_parts(prep, work)
    rendered = render(prep)
    (cfg.out / store.MANIFEST).unlink(missing_ok=True)  # never a manifest beside other shards
    shards = write_ranked(prep, ranked, rendered)
    kept = None
    if cfg.keep_states:
        probe_layers = run_probe_layers(cfg, prep.model_info)
        kept = write_states(
            work, len(prep.parts), ranked.uids, ranked.duplicate_of, prep.model_info, probe_layers
        )
    else:
        (cfg.out / store.STATES).unlink(missing_ok=True)  # the folder holds what the manifest says
    manifest = build_manifest(
        cfg,
        prep.spec,
        prep.model_info,
        ranked,
        shards,
        prefill_totals(prep, part_stats),
        prep.config_hash,
    )
    run_manifest(manifest, prep, rendered.template, rendered.convs, rendered.longest, kept)
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 3)
    store.write_manifest(cfg.out, manifest)
    return ScoreResult(cfg.out, dict(manifest), seconds)


def rank_parts(prep: Prepared, work: WorkDir) -> tuple[RankedRows, list[PrefillStats]]:
    """Every input row with its part's scores (a duplicate: its first occurrence's, a row
    that never ran: its reason), ranked; and each part's prefill stats."""
    n = prep.n_rows
    keys = [prep.part_key(p) for p in range(len(prep.parts))]
    parts, part_stats = work.read_parts(
        keys,
        prep.config_hash,
        states=prep.cfg.keep_states,
        states_key=states_key(prep.cfg, prep.model_info),
        advance=progress.step(f"merge: reading {count(len(keys), 'part')}", len(keys)),
    )
    rows = prep.rows.to_pydict()
    reasons: list[str | None] = list(rows["reason"])
    ids, ps = rows["input_ids"], rows["p"]
    values = {name: np.full(n, np.nan) for name in ("score", "c_intra", "c_inter")}
    values["tokens_prefix"] = np.array([-1 if p is None else p for p in ps], dtype=np.int64)
    values["tokens_question"] = np.array(
        [-1 if p is None else len(i) - p for i, p in zip(ids, ps)], dtype=np.int64
    )
    scored = ScoredRows.from_table(parts)
    for name in ("score", "c_intra", "c_inter"):
        values[name][scored.row] = getattr(scored, name)
    for r, why in zip(scored.row.tolist(), scored.reason):
        reasons[r] = why
    duplicate_of = [None if d is None else int(d) for d in rows["duplicate_of"]]
    for i, first in enumerate(duplicate_of):  # a duplicate is what its first occurrence is
        if first is not None:
            reasons[i] = reasons[first]
            for v in values.values():
                v[i] = v[first]
    uids = rows["uid"]
    ranked = RankedRows(
        uids=uids,
        answers=rows["answer"],
        **values,
        reasons=reasons,
        order=rank_order(values["score"], uids, duplicate_of),
        duplicate_of=duplicate_of,
    )
    return ranked, part_stats


def render(prep: Prepared) -> Rendered:
    """The conversations again, from the prepared input table: the same rows, the same
    answer as when the run was prepared."""
    n = prep.n_rows
    questions = prep.rows.column("question").to_pylist()
    template, convs = run_conversations(
        prep.cfg,
        prep.table,
        prep.spec,
        questions,
        progress.step(f"merge: rendering {count(n, 'prompt')}", n),
    )
    totals = prep.rows.column("total_tokens").to_pylist()
    return Rendered(template, convs, max((t for t in totals if t is not None), default=0))


def write_ranked(prep: Prepared, ranked: RankedRows, rendered: Rendered) -> list[Shard]:
    """OUT/data: the ranked rows in verl's schema, a shard of cfg.rows_per_shard at a time."""
    cfg, spec, n = prep.cfg, prep.spec, prep.n_rows
    convs = rendered.convs
    found = [c.question if c is not None and c.from_input else None for c in convs]
    inputs = TableInputs(
        question_key=spec.question_key,
        answer_key=spec.answer_key,
        data_source=spec.data_source,
        split=cfg.split or "train",
        prompts=[c.trained if c is not None else None for c in convs],
        questions=found if any(q is not None for q in found) else None,
        replace_data_source=cfg.data_source is not None,
    )
    n_shards = store.shard_count(n, cfg.rows_per_shard)
    return store.write_shards(
        lambda first, end: build_table(prep.table, ranked, inputs, ranks=(first, end)),
        n,
        cfg.out,
        rows_per_shard=cfg.rows_per_shard,
        split=cfg.split or "train",
        advance=progress.step(f"merge: writing {count(n_shards, 'shard')} to {cfg.out}", n_shards),
    )


def write_states(
    work: WorkDir,
    n_parts: int,
    uids: list[str],
    duplicate_of: list[int | None],
    model_info: ModelInfo,
    probe_layers: list[int],
) -> StatesInfo:
    """OUT/states.npz from the parts' pooled states: one row per scored input row (a duplicate
    gets its first occurrence's states, as it gets its scores), in input-row order, with
    `row` (the input row, extra_info.index) and `gain_uid`, then the (N, d) float16 features:
    question_mean, last_token, prompt_end@L<k> per probe layer. The manifest's `states` entry."""
    got = work.read_states(
        n_parts, progress.step(f"merge: reading the states of {count(n_parts, 'part')}", n_parts)
    )
    d = int(model_info.hidden_size)
    rows = got.get("row", np.zeros(0, np.int64))
    at = {int(r): i for i, r in enumerate(rows)}
    copies = [
        (i, at[first]) for i, first in enumerate(duplicate_of) if first is not None and first in at
    ]
    take = np.array([*range(len(rows)), *(j for _, j in copies)], dtype=np.int64)
    row = np.concatenate([rows, np.array([i for i, _ in copies], np.int64)])
    order = np.argsort(row, kind="stable")
    arrays = {"row": row[order], "gain_uid": np.array([uids[r] for r in row[order]], dtype=np.str_)}
    features = [*POOLED, *(feature_name(k) for k in probe_layers)]
    for name in features:
        v = got.get(name, np.zeros((0, d), np.float16))
        arrays[name] = v[take[order]]
    sha = store.write_npz_atomic(work.out / store.STATES, arrays)
    return StatesInfo(
        path=store.STATES,
        rows=int(len(row)),
        sha256=sha,
        dtype="float16",
        layer=model_info.layer,
        hidden_size=d,
        probe_layers=tuple(probe_layers),
        features=tuple(features),
        arrays={
            "row": "input row (extra_info.index)",
            "gain_uid": "the row's gain_uid",
            "question_mean": "mean of the question tokens' MLP inputs at the layer",
            "last_token": "MLP input at the question's last token, at the layer",
            **{
                feature_name(k): f"residual stream after {k} decoder layers (Hugging Face's "
                f"output_hidden_states[{k}]) at the last token of the whole prompt, "
                "generation prompt included"
                for k in probe_layers
            },
        },
    )


def merge_run(out: Path) -> ScoreResult:
    """`gain-curate merge OUT`: rank-merge the parts that --shard workers wrote. Nothing is
    resolved or read again here: the run's runtime, config hash and prepared rows come from
    OUT/.gain-curate, so a CPU login node merges what GPU nodes scored."""
    t0 = time.perf_counter()
    return merge(load_prepared(out, for_merge=True), t0)
