"""What the decoder is trained to predict (the back ends compute the masked cross-entropy over it).

Decoder input:  <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>  text tokens
Targets:        the same sequence shifted left by one, ending in <|endoftext|>.
The loss counts only targets after the prefix (the text and the final <|endoftext|>), never the
prefix itself or padding. With timestamp targets the prefix has no <|notimestamps|> and the text
is wrapped in <|0.00|> ... <|end|>, so a fine-tuned model keeps predicting segment times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

TIME_PRECISION = 0.02


@dataclass
class Label:
    tokens: List[int]  # prefix + text (+ end timestamp) + <|endoftext|>
    prefix_len: int  # tokens not predicted by the loss (the start of transcript, language, task)
    truncated: bool = False

    @property
    def target_count(self) -> int:
        """The tokens the loss counts (collate's mask)."""
        return len(self.tokens) - self.prefix_len


def prefix_tokens(tokenizer, language: Optional[str], task: str, timestamps: bool) -> List[int]:
    seq = [tokenizer.sot]
    if tokenizer.multilingual:
        if language is None:
            raise ValueError("a multilingual model needs the language of every utterance (--language or a language field)")
        seq.append(tokenizer.language_token_for(language))
        seq.append(tokenizer.translate if task == "translate" else tokenizer.transcribe)
    if not timestamps:
        seq.append(tokenizer.no_timestamps)
    return seq


def make_label(tokenizer, text: str, language: Optional[str], task: str = "transcribe",
               duration: Optional[float] = None, timestamps: bool = False, max_tokens: int = 448) -> Label:
    """Tokens for one utterance, capped at the decoder context (`max_tokens`).

    Text gets a leading space as Whisper writes it. An over-long label is cut and loses its
    <|endoftext|> (reported as truncated) rather than teaching the model to stop mid-sentence."""
    if not text.strip():  # no speech: the transcript ends at once (timestamp decoding must begin with a time)
        timestamps = False
    prefix = prefix_tokens(tokenizer, language, task, timestamps and duration is not None)
    body = tokenizer.encode(" " + text.strip()) if text.strip() else []
    if timestamps and duration is not None:
        end = min(round(duration / TIME_PRECISION), 1500)
        body = [tokenizer.timestamp_begin] + body + [tokenizer.timestamp_begin + end]
    tokens = prefix + body + [tokenizer.eot]
    if len(tokens) > max_tokens:
        return Label(tokens[:max_tokens], len(prefix), truncated=True)
    return Label(tokens, len(prefix))


def collate(labels: Sequence[Label], pad_token: int) -> tuple:
    """(inputs, targets, mask) int32/int32/float32 numpy arrays of shape (batch, longest - 1)."""
    width = max(len(lab.tokens) for lab in labels) - 1
    inputs = np.full((len(labels), width), pad_token, dtype=np.int32)
    targets = np.full((len(labels), width), pad_token, dtype=np.int32)
    mask = np.zeros((len(labels), width), dtype=np.float32)
    for i, lab in enumerate(labels):
        t = lab.tokens
        inputs[i, : len(t) - 1] = t[:-1]
        targets[i, : len(t) - 1] = t[1:]
        mask[i, lab.prefix_len - 1 : len(t) - 1] = 1.0
    return inputs, targets, mask

