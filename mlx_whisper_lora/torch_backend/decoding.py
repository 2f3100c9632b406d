"""Greedy decoding for the torch model, with the MLX decoder's logit rules (shared code).

Used to compare transcripts across back ends and by `transcribe --backend torch` style checks; the
decoder is re-run over the whole prefix each step (no self-attention cache), which is simple and
exact; the cross-attention's keys and values over the audio are computed once per window.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from ..decoding import DecodingOptions, SuppressBlank, SuppressTokens, _suppressed_ids
from ..tokenizer import get_tokenizer


@torch.no_grad()
def greedy_decode(model, mel: torch.Tensor, language: Optional[str] = "en", task: str = "transcribe",
                  sample_len: Optional[int] = None) -> List[str]:
    """Texts of greedy, timestamp-free decoding of log-mel windows (batch, 3000, n_mels)."""
    model.eval()
    tok = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=task,
                        model_dir=getattr(model, "folder", None))
    initial = list(tok.sot_sequence) + [tok.no_timestamps]
    options = DecodingOptions(language=language, task=task, without_timestamps=True)
    filters = [SuppressBlank(tok, len(initial)), SuppressTokens(_suppressed_ids(options, tok))]
    device = next(model.parameters()).device
    features = model.embed_audio(mel.to(device))
    cross_kv = model.decoder.base_cross_kv(features)  # the audio side's projections, once per window
    tokens = np.array([initial] * mel.shape[0], dtype=np.int64)
    done = np.zeros(mel.shape[0], dtype=bool)
    for _ in range(sample_len or model.dims.n_text_ctx // 2):
        hidden = model.decoder.hidden(torch.from_numpy(tokens).to(device), features, cross_kv)
        logits = model.decoder.logits(hidden[:, -1]).float().cpu().numpy()
        for f in filters:
            f.apply(logits, tokens)
        nxt = logits.argmax(-1)
        nxt[done] = tok.eot
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        done |= nxt == tok.eot
        if done.all():
            break
    return [tok.decode([t for t in row[len(initial):] if t != tok.eot]).strip() for row in tokens.tolist()]
