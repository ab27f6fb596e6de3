"""Prompts as the text encoder will see them: a cut or an unreadable prompt is said, never silent.

The tokenizer keeps ``model_max_length`` tokens (77 on SD/SDXL, 32 on the built-in model) including the start
and end tokens; what is beyond is dropped, so a long prompt gets one warning. A prompt of which the tokenizer
can represent nothing (every piece unknown, e.g. a script it has no pieces for) would train or draw as the
empty prompt: that is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from b4m.errors import B4MError, warn

__all__ = ["ORDINARY_WORDS", "check_prompts"]

ORDINARY_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "and",
        "or",
        "with",
        "without",
        "by",
        "for",
        "from",
        "as",
        "is",
        "are",
        "this",
        "that",
        "photo",
        "picture",
        "image",
        "style",
        "art",
        "painting",
        "drawing",
        "render",
        "rendering",
        "left",
        "right",
        "top",
        "bottom",
        "small",
        "large",
        "big",
        "background",
    ]
)
"""Words never recorded as trigger words, however the tokenizer splits them."""


def check_prompts(tokenizer: Any, prompts: Sequence[str], option: str) -> None:
    """Warn (one line each) about prompts the tokenizer cuts; refuse prompts it cannot represent at all."""
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    unk = getattr(tokenizer, "unk_token_id", None)
    for prompt in prompts:
        if not prompt.strip():
            continue
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
        content = ids[1:-1]  # between the start and end tokens (CLIP's unknown token is its end token)
        if not content or (unk is not None and all(i == unk for i in content)):
            raise B4MError(
                f"{option}: the tokenizer cannot represent the prompt {prompt!r} (it would become the empty "
                "prompt); write it in words the base model's tokenizer knows"
            )
        if unk is not None and unk in content:
            warn(f"{option}: parts of the prompt {prompt!r} are unknown to the tokenizer and read as <unk>")
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1 : limit - 1]).strip()
            warn(
                f"{option}: the prompt {prompt!r} is {len(ids)} tokens; the text encoder keeps {limit}, "
                f"so it reads {kept!r}"
            )
