"""What a text-reading method reads of an example: the protocol's encoder text, a field of it,
and the target LM's view of it (the preset's token cut)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Literal

from tdabench.method.base import FitContext
from tdabench.spec import Example


def example_text(ex: Example, max_prompt_words: int = 256) -> str:
    """The protocol's encoder text: ``"Question: " + prompt + "\\nAnswer: " + response``, with
    the prompt capped at ``max_prompt_words`` words."""
    words = ex.prompt.split()
    prompt = " ".join(words[:max_prompt_words]) if len(words) > max_prompt_words else ex.prompt
    return f"Question: {prompt}\nAnswer: {ex.response}"


TextField = Literal["prompt", "response", "both"]  # the text a text-matching method uses
FIELDS = typing.get_args(TextField)


def check_field(field: str) -> None:
    """Refuse an unknown text ``field`` (see :func:`field_texts`), naming the valid ones."""
    if field not in FIELDS:
        raise ValueError(f"field must be one of {list(FIELDS)}, not {field!r}")


def field_texts(examples: list[Example], field: str, max_prompt_words: int = 256) -> list[str]:
    """The text of each example that a text-matching method indexes or queries with: its
    prompt, its response, or both as :func:`example_text`."""
    check_field(field)
    if field == "prompt":
        return [ex.prompt for ex in examples]
    if field == "response":
        return [ex.response for ex in examples]
    return [example_text(ex, max_prompt_words) for ex in examples]


TextView = Literal["model", "full"]  # what a text method reads of an example (see text_view)
TEXTS = typing.get_args(TextView)


def check_text(text: str) -> None:
    """Refuse an unknown ``text`` (see :func:`text_view`), naming the valid ones."""
    if text not in TEXTS:
        raise ValueError(f"text must be one of {list(TEXTS)}, not {text!r}")


def text_view(text: str, context: FitContext) -> Callable[[list[Example]], list[Example]]:
    """What a text method reads of an example: ``"full"``, the example as stored; ``"model"``,
    its prompt and response as the target LM sees them, each cut to the preset's
    ``max_prompt_tokens`` / ``max_response_tokens`` of the target LM's tokenizer (as
    ``tdabench.lm.encode`` cuts them) and decoded back to text. A part that fits is kept as is.
    On published ground truth (``groundtruth.source="published"``) the model that made the
    losses saw the records as their authors formatted them, not through tdabench's cut, so
    ``"model"`` is the example as stored there too."""
    check_text(text)
    if text == "full" or context.spec.groundtruth.source != "finetune":
        return list
    from tdabench import lm

    spec = context.spec.model
    tokenizer = lm.load_base_model(spec, context.data.warmup, context.data.pool).tokenizer

    def cut(part: str, limit: int) -> str:
        ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        return part if len(ids) <= limit else tokenizer.decode(ids[:limit])

    def view(examples: list[Example]) -> list[Example]:
        return [dataclasses.replace(ex, prompt=cut(ex.prompt, spec.max_prompt_tokens),
                                    response=cut(ex.response, spec.max_response_tokens))
                for ex in examples]

    return view
