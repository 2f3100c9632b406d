"""What the decoder is trained to predict (the back ends compute the masked cross-entropy over it).

Decoder input:  <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>  text tokens
Targets:        the same sequence shifted left by one, ending in <|endoftext|>.
The loss counts only targets after the prefix (the text and the final <|endoftext|>), never the
prefix itself or padding. With timestamp targets the prefix has no <|notimestamps|> and the text
is wrapped in <|0.00|> ... <|end|>, so a fine-tuned model keeps predicting segment times; a row that knows its
segments (prepared from a long recording, or clips packed into a window: packing.py) gets each one timed,
`<|t0|> text <|t1|><|t1|> text <|t2|>`, as Whisper's own data is laid out, so the model keeps ending segments
inside the window; a last segment that runs past the window's end is written as its start time alone. With a previous text the
decoder input starts `<|startofprev|> previous text` before <|startoftranscript|>, outside the loss: the model
keeps following --initial-prompt and the text it conditions on in long files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

TIME_PRECISION = 0.02
MAX_PROMPT_TOKENS = 223  # Whisper's prompt: at most half the decoder context, less <|startofprev|>


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


def timestamp_token(tokenizer, seconds: float) -> int:
    """The timestamp token of a time inside the window (20 ms steps, at most 30.00 s)."""
    return tokenizer.timestamp_begin + min(max(round(seconds / TIME_PRECISION), 0), 1500)


def make_label(tokenizer, text: str, language: Optional[str], task: str = "transcribe",
               duration: Optional[float] = None, timestamps: bool = False, max_tokens: int = 448,
               segments: Optional[Sequence[Tuple[float, float, str]]] = None,
               previous_text: Optional[str] = None) -> Label:
    """Tokens for one utterance, capped at the decoder context (`max_tokens`).

    Text gets a leading space as Whisper writes it. With timestamps, `segments` ((start, end, text) inside the
    window) are each timed; without them the whole text is one segment. `previous_text` becomes the prompt
    (its last MAX_PROMPT_TOKENS tokens), counted in `prefix_len` so the loss never sees it. An over-long label
    is cut and loses its <|endoftext|> (reported as truncated) rather than teaching the model to stop
    mid-sentence."""
    if not text.strip():  # no speech: the transcript ends at once (timestamp decoding must begin with a time)
        timestamps = False
    prompt: List[int] = []
    if previous_text and previous_text.strip():
        prompt = [tokenizer.sot_prev] + tokenizer.encode(" " + previous_text.strip())[-MAX_PROMPT_TOKENS:]
    timed_segments = [s for s in (segments or []) if str(s[2]).strip()]
    timed = timestamps and (duration is not None or bool(timed_segments))
    prefix = prompt + prefix_tokens(tokenizer, language, task, timed)
    body = tokenizer.encode(" " + text.strip()) if text.strip() else []
    if timed and timed_segments:
        body = []
        window = float(duration) if duration is not None else 30.0
        for start, end, segment_text in timed_segments:
            if end > window + 1e-6:  # runs past the window's end: its start alone says where the next window begins
                body += [timestamp_token(tokenizer, start)]
                break
            body += [timestamp_token(tokenizer, start)] + tokenizer.encode(" " + str(segment_text).strip()) + \
                [timestamp_token(tokenizer, end)]
    elif timed:
        body = [tokenizer.timestamp_begin] + body + [timestamp_token(tokenizer, duration)]
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

