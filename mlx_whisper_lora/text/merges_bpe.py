"""Byte-level BPE driven by an explicit merge list, as Hugging Face tokenizers apply it.

tiktoken merges by the rank of the *resulting* token, Hugging Face by the rank of the *merge*. For
Whisper's multilingual vocabulary the two disagree on some words (for example ' tabs' after a tab),
because transformers' merge list was reconstructed from the vocabulary. `Tokenizer(bpe="merges")`
uses this class to reproduce transformers' ids exactly; the default stays tiktoken (openai-whisper).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List, Tuple

import regex

from .tokenizer_bytes import byte_encoder


class MergesBPE:
    def __init__(self, vocab: Dict[str, int], merges: List[Tuple[str, str]], pattern: str):
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.pattern = regex.compile(pattern)
        self.byte_encoder = byte_encoder()
        self._word = functools.lru_cache(maxsize=65536)(self._bpe)

    @classmethod
    def from_folder(cls, folder: Path, pattern: str) -> "MergesBPE":
        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            vocab, merges = model["vocab"], model["merges"]
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            merges = [l for l in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
                      if l and not l.startswith("#version")]
        else:
            raise FileNotFoundError(f"{folder} has no tokenizer.json or vocab.json + merges.txt")
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
        return cls(vocab, pairs, pattern)

    def _bpe(self, word: str) -> Tuple[str, ...]:
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                rank = self.ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best is None:
                break
            pair = (parts[best], parts[best + 1])
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> List[int]:
        ids: List[int] = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[t] for t in self._word(word))
        return ids
