"""What both ports of Whisper (backend_mlx/model.py, backend_torch/model.py) carry beside their weights.

Where the weights came from and how transcripts are rendered: set by the loaders and by adapters
(formats/adapter_files.add_saved_adapters), read by decoding and the exporters. One definition, so the two
models cannot drift apart in what they remember or how they answer for it."""

from __future__ import annotations

from typing import List, Optional, Tuple

from .dims import ModelDimensions


def default_alignment_heads(dims: ModelDimensions) -> List[Tuple[int, int]]:
    """openai-whisper's default word-timing heads: every cross-attention head of the decoder's second half,
    until the checkpoint names its own."""
    return [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
            for head in range(dims.n_text_head)]


class ModelMetadata:
    """Mixed into each port's Whisper class; `init_metadata` runs first in its constructor."""

    def init_metadata(self, dims: ModelDimensions) -> None:
        self.dims = dims
        self.source: Optional[str] = None  # path or hub id, for messages and adapter configs
        self.folder = None  # the checkpoint's folder, where a tokenizer vocabulary may be found
        self.case_style: Optional[str] = None  # "upper"/"lower": transcripts rendered in that case (case_style.py)
        self.punctuation = "keep"  # "none": transcripts rendered without punctuation

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages
