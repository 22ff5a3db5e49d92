"""Writes the vocabulary files of the tiny CLIP tokenizer used by the built-in test models.

The real CLIP vocabulary (49408 tokens) is not needed to exercise the real code: this one has the
same structure (byte-level alphabet, end-of-word suffix, BPE merges, start/end tokens), with a few
merges learnt from a short word list. Run it again only to change the vocabulary; the output is
committed under backend/assets/tiny_tokenizer/.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

WORDS = (
    "a photo of the stone brick wall wood floor metal rusty red blue green old house tree "
    "castle cat dog texture seamless painted render high quality detailed sky water grass "
    "marble tiles ceramic fabric leather"
).split()
N_MERGES = 120


def byte_alphabet() -> list[str]:
    """The printable stand-ins for the 256 byte values, the way byte-level BPE tokenizers spell them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def learn_merges(words: list[str], n: int) -> list[tuple[str, str]]:
    corpus = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges: list[tuple[str, str]] = []
    for _ in range(n):
        pairs: collections.Counter = collections.Counter()
        for word, freq in corpus.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: collections.Counter = collections.Counter()
        for word, freq in corpus.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        corpus = merged
    return merges


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "backend" / "assets" / "tiny_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    merges = learn_merges(WORDS, N_MERGES)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main()
