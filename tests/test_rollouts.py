"""`validate --rollouts`: the GRPO gradient per prompt, the rewards on real answers, the
zero-variance statistics, seeded and resumable generation, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from gain_curate.checks.generation import RolloutSettings, generate
from gain_curate.checks.probe import fit_probe
from gain_curate.checks.rollout_stats import auroc, zero_variance_drop
from gain_curate.checks.rollouts import group_advantages, grpo_grad_norms

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


@pytest.fixture(scope="module")
def tiny_lm(tiny_qwen2_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()


# --- the GRPO gradient ---------------------------------------------------------------------


def one_prompt_grad_norm(model, prompt, completions, adv, layer, temperature) -> float:
    """The plain way: one prompt's group, full logits, the GRPO loss, loss.backward()."""
    model.requires_grad_(False)
    w = model.model.layers[layer].mlp.up_proj.weight
    w.requires_grad_(True)
    w.grad = None
    loss, tokens = 0.0, sum(len(c) for c in completions)
    for c, a in zip(completions, adv):
        ids = torch.tensor([prompt + c])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float() / temperature, dim=-1)
        targets = torch.arange(len(prompt), len(prompt) + len(c))
        loss = loss - a * logp[targets - 1, ids[0, targets]].sum() / tokens
    loss.backward()
    norm = w.grad.norm().item()
    w.grad = None
    w.requires_grad_(False)
    return norm


@pytest.mark.parametrize("layer", [2, 3])  # a middle layer; the last (prompt states get no g)
def test_grpo_grad_norm_equals_one_prompt_backward(tiny_lm, layer: int) -> None:
    """The shared-prompt pass (the prompt once, its KV repeated over K rows, the head's
    gradient chunk by chunk) equals the plain one-prompt loss.backward() per group."""
    from gain_curate.checks.grpo import _group_batches

    g = torch.Generator().manual_seed(0)

    def tokens(n: int) -> list[int]:
        return torch.randint(10, 5000, (n,), generator=g).tolist()

    prompts = [tokens(9), tokens(14), tokens(6), tokens(11)]
    completions = [
        [tokens(n) for n in lens] for lens in ([5, 8, 3], [7, 7, 2], [4, 9, 6], [3, 5, 4])
    ]
    rewards = [np.array(r, float) for r in ([1, 0, 0], [0, 1, 1], [1, 1, 1], [0.2, 0.9, 0.5])]
    adv = [group_advantages(r) for r in rewards]
    temperature = 0.7
    # a budget that puts two groups in one batch (2 x 14 + 6 x 8 = 76) and leaves one alone
    assert _group_batches(prompts, completions, [0, 1, 3], 76) == [[0, 1], [3]]
    norms = grpo_grad_norms(
        tiny_lm, prompts, completions, adv, layer, temperature=temperature, token_budget=76
    )
    assert norms[2] == 0.0  # all rewards equal: zero advantages, no gradient
    for i in (0, 1, 3):
        ref = one_prompt_grad_norm(tiny_lm, prompts[i], completions[i], adv[i], layer, temperature)
        assert ref > 0 and norms[i] == pytest.approx(ref, rel=1e-5), i


def test_grpo_grad_norm_from_the_samplers_states(tiny_lm, monkeypatch) -> None:
    """At the last layer the GRPO pass reruns only the last MLP, the final norm and the head
    on the states the sampler kept: the same norms as the one-prompt loss.backward()."""
    from gain_curate.checks import grpo
    from gain_curate.checks.sampling import sample_groups

    layer, temperature = 3, 0.8
    keep = grpo.reusable_state_module(tiny_lm, layer)
    assert keep is not None and grpo.reusable_state_module(tiny_lm, 2) is None
    eos = [151645, *range(1000, 20000)]  # rows of different lengths
    groups, kept = sample_groups(
        tiny_lm,
        SAMPLER_PROMPTS,
        3,
        max_new_tokens=6,
        temperature=temperature,
        eos_ids=eos,
        pad_id=151643,
        seeds=[4, 5, 6],
        keep_input_of=keep,
    )
    assert [[x.shape for x in g] for g in kept] == [[(len(c), 64) for c in g] for g in groups]
    adv = [group_advantages(np.array(r, float)) for r in ([1, 0, 0], [0, 1, 1], [0.2, 0.9, 0.5])]
    monkeypatch.setattr(grpo, "_norms_full_pass", lambda *a, **kw: pytest.fail("the full pass ran"))
    norms = grpo_grad_norms(
        tiny_lm,
        SAMPLER_PROMPTS,
        groups,
        adv,
        layer,
        temperature=temperature,
        states=dict(enumerate(kept)),
    )
    for i, prompt in enumerate(SAMPLER_PROMPTS):
        ref = one_prompt_grad_norm(tiny_lm, prompt, groups[i], adv[i], layer, temperature)
        assert ref > 0 and norms[i] == pytest.approx(ref, rel=1e-5), i


def test_group_advantages_match_verl() -> None:
    a = group_advantages(np.array([1.0, 0.0, 0.0, 1.0]))
    std = np.std([1, 0, 0, 1], ddof=1)  # 0.57735
    assert a == pytest.approx(
        [0.5 / (std + 1e-6), -0.5 / (std + 1e-6)] * 1 + [-0.5 / (std + 1e-6), 0.5 / (std + 1e-6)]
    )
    assert np.all(group_advantages(np.array([1.0, 1.0, 1.0])) == 0)


# --- zero-variance statistics --------------------------------------------------------------


def test_zero_variance_drop_hand_computed() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    zero = np.array([False, True, False, False, True, True, True, False])  # 4 zero-variance
    half = zero_variance_drop(score, zero, 0.5).to_json()  # keeps ranks 0-3: one zero-variance kept
    assert {k: v for k, v in half.items() if k != "dropped_by_score_interval"} == {
        "keep": 0.5,
        "kept": 4,
        "zero_variance": 4,
        "dropped_by_score": 0.75,
        "dropped_by_random": 0.5,
    }
    assert half["dropped_by_score_interval"]["value"] == 0.75
    quarter = zero_variance_drop(score, zero, 0.25).to_json()  # keeps 0.9, 0.8: one kept
    assert quarter["dropped_by_score"] == 0.75 and quarter["dropped_by_random"] == 0.75
    assert zero_variance_drop(score, np.zeros(8, bool), 0.5).dropped_by_score is None


def test_zero_variance_drop_interval_is_the_hand_bootstrap() -> None:
    """The share of zero-variance groups a top-X% filter drops carries the seeded bootstrap
    interval over prompts, computed here resample by resample from the definition, and a
    warning when the interval includes what a random subset of the same size drops."""
    n, keep = 40, 0.25
    rng = np.random.default_rng(3)
    score = rng.normal(size=n)
    score[[5, 11]] = np.nan  # unscored: ranked last
    zero = rng.random(n) < 0.4

    def naive(s: np.ndarray, z: np.ndarray) -> float:
        order = sorted(range(n), key=lambda i: (-s[i] if np.isfinite(s[i]) else np.inf, i))
        kept = set(order[: round(keep * n)])
        dropped = sum(bool(z[i]) and i not in kept for i in range(n))
        return dropped / z.sum() if z.sum() else np.nan

    got = zero_variance_drop(score, zero, keep, seed=7, resamples=400).to_json()
    idx = np.random.default_rng(7).integers(0, n, size=(400, n))
    values = np.array([naive(score[r], zero[r]) for r in idx])
    low, high = np.quantile(values[np.isfinite(values)], [0.025, 0.975])
    interval = got["dropped_by_score_interval"]
    assert got["dropped_by_score"] == interval["value"] == naive(score, zero)
    assert (interval["low"], interval["high"]) == pytest.approx((low, high), abs=1e-12)
    assert interval["n"] == n and got["dropped_by_random"] == 0.75
    assert "includes 0.75" in interval["warning"]  # an unrelated score: like a random subset
    planted = zero_variance_drop(
        np.where(zero, -1.0, 1.0) + rng.normal(0, 0.1, n), zero, keep
    ).to_json()
    assert planted["dropped_by_score"] == 1.0 and planted["dropped_by_score_interval"]["low"] > 0.75
    assert planted["dropped_by_score_interval"]["warning"] is None


def test_auroc_equals_mann_whitney() -> None:
    assert auroc(np.array([1.0, 2, 3, 4]), np.array([False, False, True, True])) == 1.0
    assert auroc(np.array([1.0, 1, 1, 1]), np.array([False, True, False, True])) == 0.5
    assert auroc(np.array([1.0, 2]), np.array([True, True])) is None
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=300), 1)  # ties
    label = rng.random(300) < 0.3 + 0.2 * (score > 0)
    u = stats.mannwhitneyu(score[label], score[~label]).statistic
    assert auroc(score, label) == pytest.approx(u / (label.sum() * (~label).sum()), abs=1e-12)


# --- rewards on real answers -----------------------------------------------------------------


@needs_data
def test_math_verify_reward_on_real_gsm8k_answers() -> None:
    from gain_curate.checks.rewards import math_reward
    from gain_curate.inputs.sources import load_source

    src = load_source(str(DATA / "gsm8k" / "train.jsonl"), limit=200)
    raw = [
        json.loads(line)["answer"]
        for line in (DATA / "gsm8k" / "train.jsonl").open()
        if line.strip()
    ][:200]
    right = [math_reward(solution, gold) for solution, gold in zip(raw, src.answers)]
    assert sum(right) == 200  # the reference solution ('... #### 72') earns its own answer
    wrong = [
        math_reward(solution, str(float(gold) + 1)) for solution, gold in zip(raw, src.answers)
    ]
    assert sum(wrong) == 0
    assert math_reward("<think>9 * 8</think> <answer> 72 </answer>", "72") == 1.0
    assert math_reward("The total is 72.\n#### $72.00", "72") == 1.0
    assert math_reward("The total is $72.00.", "72") == 0.0  # right, but never marked final


@needs_data
def test_math_verify_reward_on_real_math_answers() -> None:
    from gain_curate.checks.rewards import math_reward
    from gain_curate.inputs.sources import load_source

    src = load_source(str(DATA / "math" / "train.json"), limit=200)  # final answers, LaTeX
    answers = [a for a in src.answers if a]
    assert len(answers) == 200
    right = [math_reward(f"So the answer is $\\boxed{{{a}}}$.", a) for a in answers]
    assert sum(right) == len(answers)
    tagged = [math_reward(f"<think>...</think> <answer>{a}</answer>", a) for a in answers]
    assert sum(tagged) == len(answers)  # bare LaTeX in <answer> tags: (3, -1), x^4-16, [0,3)
    shifted = [math_reward(f"$\\boxed{{{a}}}$", b) for a, b in zip(answers, answers[1:])]
    same = sum(a == b for a, b in zip(answers, answers[1:]))
    assert sum(shifted) == same  # another problem's answer passes only when it is equal
    assert math_reward("<answer>\\dfrac12</answer>", "\\frac{1}{2}") == 1.0


# the completion of issue 18, cut off at --max-new-tokens: its last number (20) is the gold
CUT_OFF = (
    "Sanjay ate 10 pies on Monday. On Tuesday he ate twice as many, so he ate 10 x 2 = 20 pies."
    "\nSanjay at the"
)


def test_default_reward_counts_only_a_marked_final_answer() -> None:
    from gain_curate.checks.rewards import final_answer, math_reward

    assert final_answer(CUT_OFF) is None and math_reward(CUT_OFF, "20") == 0.0
    for unfinished in ("The answer is <answer> 20", "so it is \\boxed{20", "20 pies. ###"):
        assert math_reward(unfinished, "20") == 0.0, unfinished  # a marker begun, never closed
    marked = {  # completion -> (gold it earns 1.0 for, a gold it earns 0.0 for)
        CUT_OFF + " store.\n#### 20": ("20", "21"),
        "He ate 10 x 2 = 20 pies.\n#### 25": ("25", "20"),  # a wrong final answer, not 20
        "First \\boxed{3}; no, recounting: $\\boxed{4}$.": ("4", "3"),  # the LAST \\boxed{}
        "x = \\boxed{\\frac{1}{2}} since 2x = 1": ("0.5", "2"),
        "<think>20 or 30?</think> <answer>30</answer>": ("30", "20"),
        "<answer>7</answer> and #### 8": ("7", "8"),  # the tag first, then ####
        "#### 1,234": ("1234", "1,235"),
    }
    for completion, (right, wrong) in marked.items():
        assert math_reward(completion, right) == 1.0, completion
        assert math_reward(completion, wrong) == 0.0, completion


def test_reward_spec_errors_are_one_line(tmp_path: Path, monkeypatch) -> None:
    from gain_curate.checks.rewards import Group, load_reward, score_group
    from gain_curate.errors import InputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(
        "def exact(c, a):\n    return float(c.strip() == a)\n"
        "def nothing(c, a):\n    return None\n"
        "def short(prompts, completions, **kw):\n    return [1.0]\n"
    )
    reward = load_reward("my_rewards:exact")
    group = Group([{"role": "user", "content": "2+2?"}], [" 4 ", "5"], [[1, 2], [3, 2]], "4", {})
    assert reward.name == "my_rewards:exact" and score_group(reward, group) == ([1.0, 0.0], 0)
    for spec, message in (
        (
            "my_rewards",
            "`reward` my_rewards: expected module:function, e.g. my_rewards:exact_match, or verl",
        ),
        (
            "trl:my_rewards",
            (
                "`reward` trl:my_rewards: expected trl:module:function, "
                "e.g. trl:my_rewards:accuracy, or verl"
            ),
        ),
        ("my_rewards:nope", "`reward` my_rewards:nope: my_rewards has no function nope"),
    ):
        with pytest.raises(InputError) as err:
            load_reward(spec)
        assert str(err.value) == message
    with pytest.raises(InputError, match=r"^`reward` nosuch:f: cannot import nosuch"):
        load_reward("nosuch:f")
    with pytest.raises(
        InputError, match=r"^`reward` my_rewards:nothing returned None; return a number$"
    ):
        score_group(load_reward("my_rewards:nothing"), group)
    with pytest.raises(InputError, match=r"returned 1 rewards for 2 completions"):
        score_group(load_reward("trl:my_rewards:short"), group)


def test_trl_reward_is_called_as_grpo_trainer_calls_it(tmp_path: Path, monkeypatch) -> None:
    """TRL 1.16's _calculate_rewards: keyword arguments prompts, completions (conversational:
    one assistant message each), completion_ids, every other column as a list of K values,
    trainer_state, log_extra, log_metric; a None reward is 0 and counted."""
    from gain_curate.checks.rewards import Group, load_reward, score_group

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trl_rewards.py").write_text(
        "CALLS = []\n"
        "def accuracy(prompts, completions, completion_ids, reward_model, **kwargs):\n"
        "    CALLS.append(dict(prompts=prompts, "
        "completions=completions, completion_ids=completion_ids,\n"
        "                      reward_model=reward_model, **kwargs))\n"
        "    out = []\n"
        "    for c, rm in zip(completions, reward_model):\n"
        "        head, hashes, said = c[0]['content'].rpartition('####')\n"
        "        out.append(float(said.strip() == rm['ground_truth']) if hashes else None)\n"
        "    return out\n"
    )
    reward = load_reward("trl:trl_rewards:accuracy")
    chat = [{"role": "user", "content": "Sanjay's pies?"}]
    row = {
        "data_source": "openai/gsm8k",
        "reward_model": {"ground_truth": "20", "style": "rule"},
        "extra_info": {"index": 3},
        "gain_score": 0.5,
    }
    texts = ["... #### 20", "... #### 21", CUT_OFF]
    ids = [[5, 6, 2], [5, 7, 2], [5, 8, 9]]
    assert score_group(reward, Group(chat, texts, ids, "20", row)) == ([1.0, 0.0, 0.0], 1)
    import trl_rewards

    (call,) = trl_rewards.CALLS
    assert call["prompts"] == [chat] * 3
    assert call["completions"] == [[{"role": "assistant", "content": t}] for t in texts]
    assert call["completion_ids"] == ids
    for column in ("data_source", "reward_model", "extra_info", "gain_score"):
        assert call[column] == [row[column]] * 3
    assert call["reward_model"][0] is not call["reward_model"][1]  # a copy per completion
    assert call["trainer_state"] is None and callable(call["log_metric"])
    assert set(call) == {
        "prompts",
        "completions",
        "completion_ids",
        "data_source",
        "reward_model",
        "extra_info",
        "gain_score",
        "trainer_state",
        "log_extra",
        "log_metric",
    }


def test_verl_reward_calls_default_compute_score_per_row(monkeypatch) -> None:
    """A stand-in of verl.utils.reward_score (the real one: tests/integrations/
    test_rewards_real.py): each row's data_source, reward_model.ground_truth, extra_info;
    a dict result's "score"; an unknown data_source and a missing verl are one line each."""
    import sys
    import types

    from gain_curate.checks.rewards import Group, check_reward, load_reward, score_group
    from gain_curate.errors import InputError

    calls = []

    def default_compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
        calls.append((data_source, solution_str, ground_truth, extra_info))
        if data_source != "openai/gsm8k":
            raise NotImplementedError(f"Reward function is not implemented for {data_source=}")
        return {"score": float(solution_str.endswith(f"#### {ground_truth}")), "acc": True}

    module = types.ModuleType("verl.utils.reward_score")
    module.default_compute_score = default_compute_score
    for name in ("verl", "verl.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "verl.utils.reward_score", module)
    row = {
        "data_source": "openai/gsm8k",
        "reward_model": {"ground_truth": "20"},
        "extra_info": {"index": 7},
    }
    reward = load_reward("verl")
    group = Group([], ["so #### 20", "so #### 21", CUT_OFF], [[1], [2], [3]], "unused", row)
    assert reward.name == "verl" and score_group(reward, group) == ([1.0, 0.0, 0.0], 0)
    assert calls == [("openai/gsm8k", t, "20", {"index": 7}) for t in group.completions]
    local = {**row, "data_source": "gsm8k/train"}  # what `score` names a local gsm8k/train.jsonl
    with pytest.raises(
        InputError,
        match=(
            r"^`reward` verl: verl's default_compute_score "
            r"has no reward for data_source 'gsm8k/train' \("
        ),
    ):
        check_reward("verl", [row, local], ["20", "20"])  # before any model runs
    with pytest.raises(InputError, match=r"data_source 'gsm8k/train'"):
        score_group(reward, Group([], ["#### 20"], [[1]], "20", local))
    monkeypatch.setitem(sys.modules, "verl.utils.reward_score", None)  # not installed
    with pytest.raises(InputError, match=r"^`reward` verl needs verl importable here"):
        load_reward("verl")


def test_cut_off_completions_earn_nothing_and_are_counted(monkeypatch, capsys) -> None:
    """run_rollouts with generation and the GRPO pass stood in: the cut-off completion of
    issue 18 earns 0 under the default reward, is marked truncated, and a truncated share
    above 20 % is one warning line in validate.json's summary and on the console."""
    import dataclasses
    import types

    from gain_curate.checks import rollout_stats, rollouts
    from gain_curate.cli.views import print_validate

    eos, limit = 2, 6
    texts = {
        10: CUT_OFF,
        11: CUT_OFF + " store.\n#### 20",
        12: "He ate 20 pies.\n#### 20",
        13: "#### 21",
    }
    completions = [
        [[10, 3, 3, 3, 3, 3], [11, 2], [12, 2], [13, 2]],  # one of four cut off
        [[10, 3, 3, 3, 3, 3], [10, 3, 3, 3, 3, 3], [12, 3, 2], [13, 2]],  # two cut off
    ]
    monkeypatch.setattr(rollouts, "generate", lambda *a, **kw: completions)
    monkeypatch.setattr(
        rollouts, "grpo_grad_norms", lambda model, prompts, *a, **kw: np.zeros(len(prompts))
    )

    class Tok:  # what run_rollouts asks of a tokenizer
        pad_token_id, eos_token_id = 0, eos

        def apply_chat_template(self, chat, **kw):
            return chat[0]["content"]

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 4]}

        def decode(self, ids, skip_special_tokens=False):
            return texts[ids[0]]

    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=eos))
    chats = [[{"role": "user", "content": "Sanjay's pies?"}]] * 2
    s = RolloutSettings(k=4, max_new_tokens=limit)
    rl = rollouts.run_rollouts(
        model,
        Tok(),
        chats,
        ["20", "20"],
        settings=s,
        reward=None,
        layer=0,
        folder=Path("unused"),
        model_revision=None,
    )
    assert [r["rewards"] for r in rl.records] == [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    assert [r["truncated"] for r in rl.records] == [
        [True, False, False, False],
        [True, True, False, False],
    ]
    assert rl.truncated.tolist() == [0.25, 0.5] and rl.none_rewards == 0
    signals = {name: np.array([0.1, 0.2]) for name in rollout_stats.SIGNALS}
    stats_ = rollout_stats.rollout_statistics(signals, rl).to_json()
    assert stats_["truncated_share"] == 0.375
    (warning,) = stats_["warnings"]
    assert warning.startswith(
        "38% of the completions were cut off at --max-new-tokens 6 before they ended"
    )
    truncated = np.array([0.25, 0.125])  # 19 %
    assert rollout_stats.rollout_warnings(dataclasses.replace(rl, truncated=truncated)) == []
    result = {
        "model": "m",
        "sample": 2,
        "weight": "w",
        "rollouts": {"settings": vars(s) | {"temperature": 1.0}, **stats_},
    }
    for key in (
        "spearman_grad_vs_score",
        "spearman_grad_vs_c_intra",
        "spearman_grad_vs_c_inter",
        "spearman_grad_vs_question_tokens",
        "partial_spearman_grad_vs_score_given_length",
    ):
        result[key] = None
    print_validate(result)
    out = capsys.readouterr().out
    assert "38% cut off at 6 tokens before ending" in out
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        f"warning: {warning}"
    ]


# --- generation ------------------------------------------------------------------------------


def test_generation_is_seeded_and_resumes(tiny_lm, tmp_path: Path) -> None:
    prompts = [[151644, 872, 198, 100 + i] for i in range(5)]
    s = RolloutSettings(
        k=3, max_new_tokens=6, temperature=1.0, seed=7, batch_rows=6
    )  # 2 prompts a batch
    eos = [151645]
    first = generate(
        tiny_lm, prompts, s, pad_id=151643, eos_ids=eos, folder=tmp_path / "r", key="k"
    )
    assert [len(g) for g in first] == [3] * 5
    assert all(0 < len(c) <= 6 and (len(c) == 6 or c[-1] in eos) for g in first for c in g)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        f"batch-0000{b}.json" for b in range(3)
    ]
    (tmp_path / "r" / "batch-00001.json").unlink()  # as if killed during the second batch
    torch.manual_seed(123)  # the global RNG state does not matter: each prompt seeds itself
    again = generate(
        tiny_lm, prompts, s, pad_id=151643, eos_ids=eos, folder=tmp_path / "r", key="k"
    )
    assert again == first
    fresh = generate(tiny_lm, prompts, s, pad_id=151643, eos_ids=eos)  # no folder at all
    assert fresh == first
    other = generate(
        tiny_lm,
        prompts,
        RolloutSettings(k=3, max_new_tokens=6, seed=8, batch_rows=6),
        pad_id=151643,
        eos_ids=eos,
    )
    assert other != first


def test_batch_layout_packs_whole_groups_under_both_budgets() -> None:
    from gain_curate.checks.generation import batch_layout

    lengths = [10, 50, 20, 50, 5, 30]
    s = RolloutSettings(k=4, max_new_tokens=14, batch_rows=12, batch_tokens=4 * 2 * 64)
    # longest first (ties by position); a batch's rows x (its longest + 14) within 512 tokens
    assert batch_layout(lengths, s) == [[1, 3], [5, 2], [0, 4]]
    assert batch_layout(lengths, RolloutSettings(k=4, max_new_tokens=14, batch_rows=12)) == [
        [1, 3, 5],
        [2, 0, 4],
    ]
    assert batch_layout([900], RolloutSettings(k=8, batch_tokens=100)) == [
        [0]
    ]  # one prompt at least
    vllm = RolloutSettings(k=2, batch_rows=4, engine="vllm")  # as before: consecutive prompts
    assert batch_layout(lengths, vllm) == [[0, 1], [2, 3], [4, 5]]


# --- the shared-prefix sampler -----------------------------------------------------------------

# different lengths, so the batch is left-padded
SAMPLER_PROMPTS = [
    [151644, 872, 198, 100, 101, 102, 103],
    [151644, 872, 198, 555],
    [151644, 9, 10, 11, 12],
]


def plain_logits(model, tokens: list[int]) -> torch.Tensor:
    """One sequence, no padding, no cache: the logits at every position, (T, V) fp32."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].float()


def test_shared_prefix_sampler_draws_from_the_plain_models_distribution(tiny_lm) -> None:
    """Each prompt is prefilled once and its K rows continue from the repeated KV cache: the
    logits every row samples from, at its first and at every later new token, equal a plain
    forward of the prompt and the tokens drawn so far (fp32, 1e-4); finished rows leave."""
    from gain_curate.checks.sampling import sample_groups

    k, seen = 4, {}

    def on_step(step: int, rows: torch.Tensor, logits: torch.Tensor) -> None:
        for r, row in zip(rows.tolist(), logits):
            seen[r, step] = row.clone()

    eos = [151645, *range(1000, 30000)]  # ~20 % of the vocabulary: rows end at different steps
    groups = sample_groups(
        tiny_lm,
        SAMPLER_PROMPTS,
        k,
        max_new_tokens=7,
        temperature=0.9,
        eos_ids=eos,
        pad_id=151643,
        seeds=[1, 2, 3],
        on_step=on_step,
    )
    assert [len(g) for g in groups] == [k] * 3
    for p, (prompt, group) in enumerate(zip(SAMPLER_PROMPTS, groups)):
        first = plain_logits(tiny_lm, prompt)[-1]
        for j, completion in enumerate(group):
            assert 0 < len(completion) <= 7 and all(t not in eos for t in completion[:-1])
            # the first sampled position: the prompt's own last-token logits, for every row
            torch.testing.assert_close(seen[p * k + j, 0], first, atol=1e-4, rtol=0)
            ref = plain_logits(tiny_lm, prompt + completion[:-1])
            for step in range(len(completion)):
                torch.testing.assert_close(
                    seen[p * k + j, step], ref[len(prompt) - 1 + step], atol=1e-4, rtol=0
                )
            assert (p * k + j, len(completion)) not in seen  # a finished row is not run again
    lengths = [len(c) for g in groups for c in g]
    assert min(lengths) < 7 and max(lengths) == 7  # some rows left the batch early, some ran on


def naive_draw(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """The reference: inverse CDF over the whole vocabulary in float64."""
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]


@pytest.mark.parametrize("block", [1, 7, 128, 1000])
def test_two_level_draw_is_the_inverse_cdf(block: int) -> None:
    """draw() picks, for the same uniforms, the token a full-vocabulary float64 inverse CDF
    picks (any block size, a vocabulary that is no multiple of it), and its frequencies
    match softmax(logits / T) (chi-square); zero-probability tokens are never drawn."""
    from gain_curate.checks.sampling import draw

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 997, generator=g) * 3
    logits[:, 500:600] = -torch.inf  # probability exactly 0
    prompt_of_row = torch.arange(300) // 100  # three prompts, 100 rows each
    seeds = [11, 12, 13]
    got = draw(
        logits, 0.8, prompt_of_row, [torch.Generator().manual_seed(s) for s in seeds], block=block
    )
    u = torch.cat(
        [
            torch.rand(100, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for s in seeds
        ]
    )
    assert torch.equal(got, naive_draw(logits, 0.8, u))
    assert not ((got >= 500) & (got < 600)).any()
    probs = torch.softmax(torch.tensor([0.0, 1.0, -1.0, 2.0, -30.0, 0.5, 0.1]) / 0.7, dim=-1)
    n = 200_000
    counts = torch.bincount(
        draw(
            torch.log(probs).repeat(n, 1),
            1.0,
            torch.zeros(n, dtype=torch.long),
            [torch.Generator().manual_seed(3)],
            block=block,
        ),
        minlength=7,
    )
    keep = probs * n > 5
    observed = counts[keep].double().numpy()
    expected = (probs[keep].double() / probs[keep].double().sum()).numpy() * observed.sum()
    chi2 = stats.chisquare(observed, expected)
    assert chi2.pvalue > 1e-3 and counts[4] == 0
    assert torch.equal(draw(logits, 0, prompt_of_row, []), logits.argmax(-1))  # T = 0: greedy


def test_shared_prefix_sampler_is_seeded_per_prompt(tiny_lm) -> None:
    from gain_curate.checks.sampling import sample_groups

    def draw(prompts, seeds):
        return sample_groups(
            tiny_lm,
            prompts,
            3,
            max_new_tokens=6,
            temperature=1.0,
            eos_ids=[151645],
            pad_id=151643,
            seeds=seeds,
        )

    first = draw(SAMPLER_PROMPTS, [5, 6, 7])
    torch.manual_seed(99)  # the global RNG plays no part
    assert draw(SAMPLER_PROMPTS, [5, 6, 7]) == first
    assert draw(SAMPLER_PROMPTS, [5, 6, 8])[:2] == first[:2]  # another seed moves its prompt only
    assert draw(SAMPLER_PROMPTS, [5, 6, 8])[2] != first[2]
    assert draw(SAMPLER_PROMPTS[1:2], [6]) == first[1:2]  # batch-mates do not matter
    assert len({tuple(c) for c in first[0]}) > 1  # K samples, not K copies


def test_greedy_shared_prefix_equals_generate(tiny_lm) -> None:
    """At temperature 0 every row is the argmax path: each equals `generate`'s greedy output."""
    from gain_curate.checks.sampling import sample_groups

    groups = sample_groups(
        tiny_lm,
        SAMPLER_PROMPTS,
        2,
        max_new_tokens=8,
        temperature=0,
        eos_ids=[151645],
        pad_id=151643,
        seeds=[0, 0, 0],
    )
    for prompt, group in zip(SAMPLER_PROMPTS, groups):
        ref = tiny_lm.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=8,
            pad_token_id=151643,
            eos_token_id=[151645],
        )
        expected = ref[0, len(prompt) :].tolist()
        assert group == [expected, expected]


# --- the command -----------------------------------------------------------------------------


def test_validate_rollouts_end_to_end(tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A tiny random model answers at random: a reward on the completion's parity gives
    mixed and zero-variance groups; every figure lands in validate.json and the table."""
    from click.testing import CliRunner

    from gain_curate.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "parity.py").write_text(
        "def odd(completion, answer):\n    return float(len(completion) % 2)\n"
    )
    rows = [
        {"question": f"What is {i} plus {i + 3}? Think it through.", "answer": str(2 * i + 3)}
        for i in range(12)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, val = tmp_path / "run", tmp_path / "val"
    r = CliRunner().invoke(
        main, ["score", "--model", str(tiny_qwen2_dir), "--data", "d.jsonl", "--out", str(run)]
    )
    assert r.exit_code == 0, r.output
    argv = [
        "validate",
        "--run",
        str(run),
        "--sample",
        "8",
        "--out",
        str(val),
        "--rollouts",
        "4",
        "--max-new-tokens",
        "5",
        "--reward",
        "parity:odd",
        "--rollout-batch",
        "8",
    ]
    r = CliRunner().invoke(main, [*argv, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{") :])
    rl = result["rollouts"]
    assert rl["settings"] == {
        "k": 4,
        "max_new_tokens": 5,
        "temperature": 1.0,
        "seed": 0,
        "batch_rows": 8,
        "batch_tokens": 131072,
        "engine": "hf",
    }
    assert rl["reward"] == "parity:odd" and [x["keep"] for x in rl["keep_top_by_score"]] == [
        0.25,
        0.5,
        0.75,
    ]
    saved = json.loads((val / "validate.json").read_text())["rows"]
    p = np.array(saved["pass_rate"])
    assert np.all((p >= 0) & (p <= 1)) and len(p) == 8
    assert rl["pass_rate_mean"] == pytest.approx(p.mean())
    assert (
        rl["spearman_gain_score_vs_pass_rate"]
        == pytest.approx(stats.spearmanr(saved["gain_score"], p).statistic, abs=1e-12)
        if len(set(p)) > 1
        else rl["spearman_gain_score_vs_pass_rate"] is None
    )
    zero = np.array(saved["zero_variance"])
    assert np.all(np.array(saved["grpo_grad_norm"])[zero] == 0)
    assert np.all(np.array(saved["grpo_grad_norm"])[~zero] > 0)
    records = [
        json.loads(line)
        for line in (val / "rollouts" / "completions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 8 and all(len(x["completions"]) == 4 for x in records)
    from gain_curate.inputs.template import ScoringTemplate

    # the rollout prompt is the scored conversation: system prompt, few-shot turn, question
    assert [x["prompt"] for x in records] == [
        ScoringTemplate().messages(q) for q in saved["question"]
    ]
    assert [np.mean(x["rewards"]) for x in records] == pytest.approx(p.tolist())
    cut = [x["truncated"] for x in records]
    assert rl["truncated_share"] == pytest.approx(np.mean(cut)) and rl["none_rewards"] == 0
    assert saved["truncated_share"] == pytest.approx(np.mean(cut, axis=1).tolist())
    assert len(rl["warnings"]) == (rl["truncated_share"] > 0.2)  # 5 tokens: a random model rambles
    text = CliRunner().invoke(main, argv).output  # again: the rollouts are read back, same table
    assert "the RL side: K = 4 rollouts" in text and "zero-variance groups" in text
    assert f"{100 * rl['truncated_share']:.0f}% cut off at 5 tokens before ending" in text
    assert ("warning: " in text) == (rl["truncated_share"] > 0.2)
    kept = [x for x in rl["keep_top_by_score"] if x["dropped_by_score"] is not None]
    for x in kept:  # each share with its interval over the 8 prompts, in the JSON and printed
        est = x["dropped_by_score_interval"]
        assert est["n"] == 8 and est["value"] == x["dropped_by_score"]
        assert f"{100 * est['value']:.0f}% [{100 * est['low']:.0f}%" in text.replace("\n", "")
    like_random = any(x["dropped_by_score_interval"]["warning"] for x in kept)
    assert ("uncertainty: keeping the top" in text) == like_random
    assert (
        json.loads((val / "validate.json").read_text())["rows"]["pass_rate"] == saved["pass_rate"]
    )


def test_vllm_engine_calling_contract(tmp_path: Path, monkeypatch) -> None:
    """No GPU here: a stand-in `vllm` module records what the vLLM path asks for (token-id
    prompts, n = K, a seed per batch) and returns what vLLM returns (RequestOutput-shaped)."""
    import sys
    import types

    calls = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class Engine:
        def generate(self, prompts, params, use_tqdm=False):
            calls.append(([p["prompt_token_ids"] for p in prompts], params.kw))
            seed = params.kw["seed"]
            return [
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(token_ids=[seed % 97, k, 2, 9])
                        for k in range(params.kw["n"])
                    ]
                )
                for _ in prompts
            ]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    s = RolloutSettings(k=2, max_new_tokens=4, temperature=0.8, seed=1, batch_rows=4, engine="vllm")
    prompts = [[5, 6], [7], [8, 9, 10]]
    out = generate(Engine(), prompts, s, pad_id=0, eos_ids=[2], folder=tmp_path, key="k")
    seeds = [1_000_003, 1_000_004]
    assert calls == [
        ([[5, 6], [7]], {"n": 2, "temperature": 0.8, "max_tokens": 4, "seed": seeds[0]}),
        ([[8, 9, 10]], {"n": 2, "temperature": 0.8, "max_tokens": 4, "seed": seeds[1]}),
    ]
    assert out == [[[seeds[0] % 97, 0, 2], [seeds[0] % 97, 1, 2]]] * 2 + [
        [[seeds[1] % 97, 0, 2], [seeds[1] % 97, 1, 2]]
    ]
    assert generate(Engine(), prompts, s, pad_id=0, eos_ids=[2], folder=tmp_path, key="k") == out
    assert len(calls) == 2  # the saved batches are reused


def test_validate_fits_saves_and_applies_the_probes(
    tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """validate --rollouts on a run scored with --keep-states: a probe per pooled state at the
    scored layer (the run's own states) and the middle layer (the sample scored there), each
    saved, compared beside the angle score and applied by `predict`; a middle-layer probe is
    refused by a run that kept the scored layer's states."""
    from click.testing import CliRunner

    from gain_curate.checks.probe import ProbeFit
    from gain_curate.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "parity.py").write_text(
        "def odd(completion, answer):\n    return float(len(completion) % 2)\n"
    )
    rows = [
        {"question": f"What is {i} plus {i + 3}? Think it through.", "answer": str(2 * i + 3)}
        for i in range(30)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, val = tmp_path / "run", tmp_path / "val"
    r = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            str(tiny_qwen2_dir),
            "--data",
            "d.jsonl",
            "--out",
            str(run),
            "--keep-states",
        ],
    )
    assert r.exit_code == 0, r.output
    argv = [
        "validate",
        "--run",
        str(run),
        "--sample",
        "24",
        "--out",
        str(val),
        "--rollouts",
        "4",
        "--max-new-tokens",
        "4",
        "--reward",
        "parity:odd",
    ]
    r = CliRunner().invoke(main, [*argv, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{") :])
    rl = result["rollouts"]
    names = [
        "question_mean@L3",
        "last_token@L3",
        "question_mean@L2",
        "last_token@L2",
    ]  # 4 layers: mid 2
    assert list(rl["probe_files"]) == names and list(rl["probes"]) == names
    assert rl["curriculum"]["n_run"] == 30  # the run's size, not the sample's
    for name in names:
        assert (
            f"probe pass rate ({name})" in rl["rankings"]
            and f"probe learnability ({name})" in rl["rankings"]
        )
        fit = ProbeFit.load(Path(rl["probe_files"][name]))
        assert fit.meta["features"] == name and fit.meta["n"] == 24 and len(fit.heldout) == 24
    # the scored layer's features are the run's kept states of the sampled rows
    saved = json.loads((val / "validate.json").read_text())["rows"]
    st = np.load(run / "states.npz")
    at = {int(r): i for i, r in enumerate(st["row"])}
    x = st["last_token"][[at[i] for i in saved["input_row"]]].astype(np.float64)
    fit = ProbeFit.load(Path(rl["probe_files"]["last_token@L3"]))
    p = np.array(saved["pass_rate"])
    refit = fit_probe(x, p, seed=0)
    np.testing.assert_allclose(fit.heldout, refit.heldout, rtol=1e-9, atol=1e-12)
    r = CliRunner().invoke(
        main, ["predict", str(run), "--probe", rl["probe_files"]["last_token@L3"], "--json"]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        main, ["predict", str(run), "--probe", rl["probe_files"]["last_token@L2"]]
    )
    assert (
        r.exit_code != 0
        and "fit the probe at layer 3" in r.output
        and len(r.output.strip().splitlines()) == 1
    )
    text = CliRunner().invoke(main, argv).output
    assert (
        "probe learnability (last_token@L3)" in text and "gain-curate predict RUN --probe" in text
    )
