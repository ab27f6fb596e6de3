"""Offline word-level CLIP tokenizer for the built-in base model (:mod:`b4m.models.base`).

The world's captions use a small closed vocabulary, so the tokenizer gives every caption word its own
``word</w>`` token. It also knows every lower-case letter, digit and a few symbols, both as word pieces
(``a``) and as word ends (``a</w>``), so any unseen word, such as a trigger word ``snq`` or ``w@z``, still
tokenizes, into characters, the way rare words break into pieces in real Stable Diffusion.

The result is a stock :class:`transformers.CLIPTokenizer` (byte-level BPE with ``</w>`` word ends), built
from a ``vocab.json`` and a list of merges written here, so it needs no hub download and saves with
``save_pretrained`` like any other tokenizer.

BPE recap (Sennrich et al. 2016; CLIP's variant): a word ``cat`` starts as ``c a t</w>`` and the pair with
the lowest merge rank is merged until no listed pair remains. For each vocabulary word we list a
left-to-right merge chain (``c a`` → ``ca``, ``ca t</w>`` → ``cat</w>``) and then check every word, adding
merges for any word that a chain from another word diverted, until every vocabulary word is one token.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

from b4m.io import write_text

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
SYMBOLS = ("@", "-", "'", ",", ".")
CHARACTERS = tuple(string.ascii_lowercase) + tuple(string.digits) + SYMBOLS
DEFAULT_MAX_LENGTH = 24
_WORD_RE = re.compile(r"^[a-z0-9]+$")


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank to ``pieces`` (the same rule as CLIP's tokenizer)."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces[:-1], pieces[1:], strict=True))]
        best = (
            min((r, i) for r, i in pairs if r is not None) if any(r is not None for r, _ in pairs) else None
        )
        if best is None:
            break
        pair = (pieces[best[1]], pieces[best[1] + 1])
        merged: list[str] = []
        i = 0
        while i < len(pieces):
            if i < len(pieces) - 1 and (pieces[i], pieces[i + 1]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def _initial_pieces(word: str) -> list[str]:
    return [*word[:-1], word[-1] + EOW]


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token → id) and ranked merges that make each of ``words`` a single ``word</w>`` token.

    Words must be lower-case ASCII letters and digits (the caption words of the world); anything else raises.
    Ids: 0 = ``<|startoftext|>``, 1 = ``<|endoftext|>``, then characters, then merge products in rank order.
    """
    words = sorted(set(words))
    bad = [w for w in words if not _WORD_RE.match(w)]
    if bad:
        raise ValueError(
            f"build_vocab_and_merges: words must match [a-z0-9]+, got {bad}; split or lower-case them."
        )
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + EOW, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add_merge(a: str, b: str) -> None:
        if (a, b) not in ranks:
            ranks[(a, b)] = len(merges)
            merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))

    for word in words:
        pieces = _initial_pieces(word)
        acc = pieces[0]
        for nxt in pieces[1:]:
            add_merge(acc, nxt)
            acc = acc + nxt
    # Later chains can divert earlier words (a lower-ranked pair fires first); append fix-up merges.
    for _ in range(100):
        changed = False
        for word in words:
            pieces = _bpe(_initial_pieces(word), ranks)
            if len(pieces) > 1:
                add_merge(pieces[0], pieces[1])
                changed = True
        if not changed:
            break
    else:  # pragma: no cover - would need a pathological vocabulary
        raise RuntimeError("build_vocab_and_merges: merges did not converge")
    return vocab, merges


def build_tokenizer(words: Iterable[str], max_length: int = DEFAULT_MAX_LENGTH) -> CLIPTokenizer:
    """A :class:`CLIPTokenizer` whose vocabulary holds each of ``words`` as one token, built offline.

    ``max_length`` becomes ``model_max_length`` (the text encoder's ``max_position_embeddings`` must be at
    least this). Padding uses ``<|endoftext|>`` as in CLIP.
    """
    vocab, merges = build_vocab_and_merges(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in set(words):
        ids = tok(word, add_special_tokens=False).input_ids
        if ids != [vocab[word + EOW]]:
            raise RuntimeError(f"build_tokenizer: word {word!r} tokenized to {ids}, expected one token")
    return tok


def save_tokenizer(tok: CLIPTokenizer, path: str | Path) -> Path:
    """Save with ``save_pretrained`` (tokenizer.json and its config), plus the classic ``vocab.json`` and
    ``merges.txt`` so that older transformers versions and the slow CLIP tokenizer read it too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    write_text(path / "vocab.json", json.dumps(model["vocab"], indent=0, ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    write_text(path / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return path
