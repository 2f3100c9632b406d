"""The ONNX export run in onnxruntime as this package's decoders run an engine: a DecodingModel
(inference/decoding_model.py) over the encoder and merged-decoder sessions, fed the way transformers.js feeds
them (empty caches and `use_cache_branch` false on the first step, the presents as the next step's pasts).
So `fuse --verify` checks the exported graphs with the same search (greedy, suppression, timestamp rules)
this package transcribes with, and a difference in text is the graphs', not a different decoder's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..formats.weight_names import hf_dims

QUANTIZED_SUFFIX = "_quantized"  # transformers.js: dtype q8 (its default on wasm) -> *_quantized.onnx


class OnnxWhisper:
    """Whisper in onnxruntime from an export folder (`onnx/encoder_model*.onnx`, `onnx/decoder_model_merged*.onnx`
    and config.json/generation_config.json beside them)."""

    case_style: Optional[str] = None  # the export's text is rendered as decoded (fuse says what it cannot carry)
    punctuation = "keep"

    def __init__(self, path: Path, quantized: bool = False, threads: int = 0):
        import onnxruntime as ort

        self.folder = Path(path)
        config = json.loads((self.folder / "config.json").read_text())
        generation = json.loads((self.folder / "generation_config.json").read_text())
        self.dims = hf_dims(config)
        self.alignment_heads = [tuple(h) for h in generation.get("alignment_heads", [])]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        suffix = QUANTIZED_SUFFIX if quantized else ""
        self.encoder, self.decoder = (
            ort.InferenceSession(str(self.folder / "onnx" / f"{stem}{suffix}.onnx"), options,
                                 providers=["CPUExecutionProvider"])
            for stem in ("encoder_model", "decoder_model_merged"))
        self.past = {i.name: i.shape for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")}
        self.outputs = [o.name for o in self.decoder.get_outputs()]

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages

    def encode_audio(self, mel: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(np.asarray(mel, dtype=np.float32).transpose(0, 2, 1))  # (batch, n_mels, frames)
        return self.encoder.run(None, {"input_features": features})[0]

    def decode_step(self, tokens: np.ndarray, audio_features: np.ndarray, cache: Optional[Dict[str, np.ndarray]] = None,
                    positions: Sequence[int] = (-1,)):
        rows = tokens.shape[0]
        if cache is None:  # the first step: empty pasts, as transformers.js makes them from the inputs' shapes
            cache = {name: np.zeros((rows, shape[1], 0, shape[3]), dtype=np.float32) for name, shape in self.past.items()}
            first = True
        else:
            first = False
        feeds = {"input_ids": np.asarray(tokens, dtype=np.int64), "use_cache_branch": np.array([not first]),
                 "encoder_hidden_states": np.asarray(audio_features, dtype=np.float32), **cache}
        results = dict(zip(self.outputs, self.decoder.run(None, feeds)))
        new = {name.replace("present", "past_key_values"): value for name, value in results.items()
               if name.startswith("present")}
        return results["logits"][:, list(positions)], new

    def select_rows(self, cache: Dict[str, np.ndarray], rows: np.ndarray, audio_too: bool = False) -> Dict[str, Any]:
        return {name: value[rows] for name, value in cache.items()}

    def alignment_scores(self, tokens, audio_features, heads=None):
        raise NotImplementedError("word timestamps need the cross-attention scores, which the ONNX graphs do not output")

    def set_alignment_heads(self, heads) -> None:
        self.alignment_heads = [tuple(h) for h in heads]
