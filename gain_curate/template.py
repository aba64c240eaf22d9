"""The scoring conversation and its token segments (DESIGN.md section 1).

Conversation = optional system prompt, optional few-shot turns, one user turn holding the
question (optionally followed by an instruction suffix), rendered by the model's own chat
template with add_generation_prompt=True and tokenized with add_special_tokens=False.

Segments come from character offsets, never hard-coded token counts:
    P = every token before the first token that overlaps the question text,
    Q = the tokens whose character span overlaps the question text,
    the rest (instruction, end of turn, generation prompt) is in no segment.
Causal attention means tokens after Q never influence P or Q, so they are never run.

One conversation (DESIGN.md 4): by default the conversation scored is the one the trainer
renders from the output's `prompt` column. `conversations()` decides both, per row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gain_curate.errors import InputError, ModelError

# R1-style reasoning prompt, worded by this project.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems by reasoning carefully. "
    "First think through the problem step by step inside <think> </think> tags, "
    "then state only the final result inside <answer> </answer> tags."
)

# One worked example in the same format (the GAIN-RL scoring context has one).
GAINRL_FEW_SHOT: tuple[tuple[str, str], ...] = (
    (
        "A baker fills 12 boxes with 8 muffins each and has 5 muffins left over. "
        "How many muffins did the baker make?",
        "<think> 12 boxes of 8 muffins is 12 * 8 = 96 muffins. "
        "With the 5 left over, the baker made 96 + 5 = 101 muffins. </think> "
        "<answer> 101 </answer>",
    ),
)


# verl's own preprocessing (examples/data_preprocess/gsm8k.py, math_dataset.py): one user
# turn, the question, ONE SPACE, then this instruction. verl's default rewards read exactly
# these formats: gsm8k.compute_score the last `#### <number>` (strict), math_reward the
# last \boxed{...}.
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
VERL_SEPARATOR = " "
# verl's default_compute_score (0.7.1 and 0.9.1) dispatches on these exact data_source names.
REWARD_INSTRUCTIONS = {
    "openai/gsm8k": GSM8K_INSTRUCTION,
    "lighteval/MATH": BOXED_INSTRUCTION,
    "DigitalLearningGmbH/MATH-lighteval": BOXED_INSTRUCTION,
    "HuggingFaceH4/MATH-500": BOXED_INSTRUCTION,
}
TEMPLATE_FIELDS = ("system_prompt", "few_shot", "instruction")
TRAIN_PROMPTS = ("conversation", "question")


@dataclass(frozen=True)
class ScoringTemplate:
    """What surrounds each question in the scoring pass; recorded in the manifest."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    few_shot: tuple[tuple[str, str], ...] = GAINRL_FEW_SHOT
    instruction: str | None = None
    few_shot_name: str = field(default="gainrl", compare=False)
    separator: str = "\n\n"  # between the question and the instruction (verl's own: " ")

    def user_content(self, question: str) -> str:
        return question + (self.separator + self.instruction if self.instruction else "")

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for user, assistant in self.few_shot:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return msgs + [{"role": "user", "content": self.user_content(question)}]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["few_shot"] = [list(pair) for pair in self.few_shot]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringTemplate:
        """The inverse of to_dict (a manifest's signal.template, a run's config)."""
        return cls(system_prompt=d["system_prompt"], few_shot=tuple(tuple(x) for x in d["few_shot"]),
                   instruction=d["instruction"], few_shot_name=d["few_shot_name"],
                   separator=d.get("separator", "\n\n"))  # fmt: skip


def data_source_template(data_source: str | None) -> ScoringTemplate:
    """The default conversation for a data_source. Where verl's default reward knows the name,
    verl's own preprocessing: no system prompt (the chat template's own default, if any), no
    few-shot, the question, a space and the instruction that asks for the reward's format
    (`#### n`, `\\boxed{}`); the R1-style <answer> default would earn 0 there. Else the
    R1-style system prompt and one worked example (for a reward that reads <answer>)."""
    instruction = REWARD_INSTRUCTIONS.get(data_source or "")
    if instruction is None:
        return ScoringTemplate()
    return ScoringTemplate(system_prompt=None, few_shot=(), instruction=instruction,
                           few_shot_name="none", separator=VERL_SEPARATOR)  # fmt: skip


def resolve_template(template: ScoringTemplate, flags: Any, data_source: str | None) -> ScoringTemplate:  # fmt: skip
    """The template a run scores with. `flags` None: `template` as given (library callers);
    else the fields named in `flags` (set on the command line) as given and the others from
    the data source's defaults. An explicit instruction keeps its own separator."""
    if flags is None:
        return template
    d = data_source_template(data_source)
    own = set(flags)
    return replace(
        d,
        system_prompt=template.system_prompt if "system_prompt" in own else d.system_prompt,
        few_shot=template.few_shot if "few_shot" in own else d.few_shot,
        few_shot_name=template.few_shot_name if "few_shot" in own else d.few_shot_name,
        instruction=template.instruction if "instruction" in own else d.instruction,
        separator=template.separator if "instruction" in own else d.separator,
    )


@dataclass(frozen=True)
class Conversation:
    """One row: the messages scored, the question text inside their last user turn, and the
    messages the trainer renders from the output's `prompt` column."""

    scored: list[dict[str, Any]]
    question: str
    trained: list[dict[str, Any]]
    from_input: bool = False  # `trained` is the input's own chat

    @property
    def differs(self) -> bool:
        turns = [
            [(m.get("role"), m.get("content")) for m in c] for c in (self.scored, self.trained)
        ]
        return turns[0] != turns[1]


def conversations(template: ScoringTemplate, questions: list[str | None], chats: list[Any] | None,
                  *, train_prompt: str = "conversation") -> list[Conversation | None]:  # fmt: skip
    """Per row, what is scored and what the trainer sees; None where there is no question.

    A row that comes with its own chat (`chats[i]`: the input's `prompt` column, or a chat
    question column) trains on that chat as it is. "conversation" (the default) scores that
    very chat; its question is the last user turn's text less a trailing instruction the run
    knows (the template's, verl's GSM8K and MATH ones), so the instruction is in no segment,
    as for any other input. "question" scores the template around that question instead.
    A row without a chat: "conversation" scores and trains on template.messages(question);
    "question" scores that and trains on one user turn, the question plus the instruction
    (the paper's split: its scoring template, a bare training prompt)."""
    if train_prompt not in TRAIN_PROMPTS:
        raise InputError(f"--train-prompt {train_prompt!r}: use one of {', '.join(TRAIN_PROMPTS)}")
    known = [i for i in (template.instruction, GSM8K_INSTRUCTION, BOXED_INSTRUCTION) if i]
    out: list[Conversation | None] = []
    for i, q in enumerate(questions):
        chat = chats[i] if chats is not None else None
        if q is None:
            out.append(None)
        elif isinstance(chat, list) and chat:
            q = split_instruction(q, known)
            scored = chat if train_prompt == "conversation" else template.messages(q)
            out.append(Conversation(scored, q, chat, from_input=True))
        else:
            scored = template.messages(q)
            trained = scored if train_prompt == "conversation" else [{"role": "user", "content": template.user_content(q)}]  # fmt: skip
            out.append(Conversation(scored, q, trained))
    return out


def split_instruction(text: str, instructions: list[str]) -> str:
    """`text` less a trailing instruction (and the whitespace before it), if it ends with one."""
    for instruction in instructions:
        if text.endswith(instruction) and (question := text[: -len(instruction)].rstrip()):
            return question
    return text


def template_from_options(
    *, system_prompt: str | None = None, system_prompt_file: str | Path | None = None,
    no_system_prompt: bool = False, few_shot: str | None = None, instruction: str | None = None,
) -> ScoringTemplate:  # fmt: skip
    """The one constructor behind every command's template flags: the system prompt is
    --system-prompt, else the file, else the default; --no-system-prompt drops it; an empty
    --instruction is none."""
    system = DEFAULT_SYSTEM_PROMPT
    if system_prompt_file is not None:
        try:
            system = Path(system_prompt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--system-prompt-file {system_prompt_file}: {getattr(e, 'strerror', None) or e}") from None  # fmt: skip
    if system_prompt is not None:
        system = system_prompt
    name, pairs = load_few_shot(few_shot or "gainrl")
    return ScoringTemplate(system_prompt=None if no_system_prompt else system, few_shot=pairs,
                           instruction=instruction or None, few_shot_name=name)  # fmt: skip


def load_few_shot(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`gainrl`, `none`, or a JSON file: [{"question", "answer"}, ...] or chat messages."""
    if value.lower() == "gainrl":
        return "gainrl", GAINRL_FEW_SHOT
    if value.lower() == "none":
        return "none", ()
    path = Path(value)
    if not path.is_file():
        raise InputError(f"--few-shot: no such file: {value} (use gainrl, none, or a JSON file)")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--few-shot {value}: not valid JSON ({e})") from None
    pairs = _few_shot_pairs(items)
    if pairs is None:
        raise InputError(
            f"--few-shot {value}: expected a JSON list of {{'question', 'answer'}} objects "
            "or of alternating user/assistant {'role', 'content'} messages"
        )
    return str(path), pairs


def _few_shot_pairs(items: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        return None
    if all(isinstance(x.get("question"), str) and isinstance(x.get("answer"), str) for x in items):
        return tuple((x["question"], x["answer"]) for x in items)
    roles = [x.get("role") for x in items]
    if len(items) % 2 or roles != ["user", "assistant"] * (len(items) // 2):
        return None
    if not all(isinstance(x.get("content"), str) for x in items):
        return None
    return tuple((items[i]["content"], items[i + 1]["content"]) for i in range(0, len(items), 2))


@dataclass(frozen=True)
class Segments:
    """Token ids of one scoring conversation up to the end of the question.

    input_ids[:p] is P, input_ids[p:] is Q (q = len(input_ids) - p); total_tokens is the
    length of the whole rendered conversation (what --max-tokens limits).
    """

    input_ids: list[int]
    p: int
    total_tokens: int

    @property
    def q(self) -> int:
        return len(self.input_ids) - self.p


# Stands in for the last user turn's content to find where that turn starts in the text.
_SENTINEL = "GAINCURATELASTUSERTURNSTARTSHERE"


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], question: str, **kwargs: Any) -> tuple[str, int, int]:  # fmt: skip
    """Chat-template text of `messages` (+ generation prompt) and the character span
    [start, end) of `question` inside the LAST user turn; (-1, -1) when it is not there.

    The turn's start is found by rendering the same conversation with a sentinel as that
    turn's content, so a question that also occurs in an earlier turn, in the generation
    prompt or as a role name ("assistant") is never found in the wrong place. Templates
    that trim content are handled by falling back to the stripped question."""
    kwargs = {"add_generation_prompt": True, **kwargs}
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        if last < 0:
            return text, -1, -1
        probe = [*messages[:last], {**messages[last], "content": _SENTINEL}, *messages[last + 1 :]]  # fmt: skip
        turn = tokenizer.apply_chat_template(probe, tokenize=False, **kwargs).find(_SENTINEL)
    except Exception as e:  # jinja errors: a template that rejects the roles we use
        raise ModelError(f"the model's chat template failed to render the conversation: {e}") from None  # fmt: skip
    if turn < 0 or text[:turn] != tokenizer.apply_chat_template(probe, tokenize=False, **kwargs)[:turn]:  # fmt: skip
        turn = 0  # a template that rewrites earlier turns by content: search the whole text
    stripped = question.strip()
    for needle in (question, stripped):
        start = text.find(needle, turn) if needle else -1
        if start >= 0:
            return text, start, start + len(needle)
    return text, -1, -1


def render(tokenizer: Any, template: ScoringTemplate, question: str) -> tuple[str, int, int]:
    """The scoring conversation's text and the question's character span in it."""
    return render_chat(tokenizer, template.messages(question), question)


def token_segments(tokenizer: Any, rendered: list[tuple[str, int, int]]) -> list[Segments | None]:  # fmt: skip
    """Tokenize rendered conversations (add_special_tokens=False: the template carries BOS)
    and cut each into P and Q by character offsets; None where Q is not found."""
    if not rendered:  # a part whose rows all have a problem already
        return []
    enc = tokenizer(
        [text for text, _, _ in rendered],
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    out: list[Segments | None] = []
    for (_, q_start, q_end), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        overlap = [i for i, (s, e) in enumerate(offsets) if s < q_end and e > q_start and e > s]
        if q_start < 0 or not overlap:
            out.append(None)
            continue
        first, last = overlap[0], overlap[-1]
        out.append(Segments(input_ids=list(ids[: last + 1]), p=first, total_tokens=len(ids)))
    return out


def segment_batch(
    tokenizer: Any, template: ScoringTemplate, questions: list[str]
) -> list[Segments | None]:
    """Tokenize each scoring conversation and cut it into P and Q; None where Q is not found."""
    return token_segments(tokenizer, [render(tokenizer, template, q) for q in questions])


def conversation_segments(tokenizer: Any, convs: list[Conversation]) -> list[Segments | None]:
    """Each row's scored conversation tokenized and cut into P and Q (None: Q not found)."""
    return token_segments(tokenizer, [render_chat(tokenizer, c.scored, c.question) for c in convs])


def describe(template: ScoringTemplate) -> str:
    """One line: what surrounds the question, e.g. `no system prompt, no few-shot, question +
    instruction "Let's think step by step and output the final answer after "####"."`."""
    if template.system_prompt is None:
        system = "no system prompt (the chat template's default, if any)"
    else:
        system = "the R1-style system prompt" if template.system_prompt == DEFAULT_SYSTEM_PROMPT else "a system prompt"  # fmt: skip
    n = len(template.few_shot)
    shots = f"{n} few-shot example{'s' if n != 1 else ''} ({template.few_shot_name})" if n else "no few-shot"  # fmt: skip
    tail = (
        f'question + instruction "{template.instruction}"' if template.instruction else "question"
    )
    return f"{system}, {shots}, {tail}"


def template_hash(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
