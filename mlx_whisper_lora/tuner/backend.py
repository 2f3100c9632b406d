"""What the shared training loop and evaluation ask of a back end (MLX: backend_mlx/engine.py,
PyTorch: backend_torch/engine.py). Everything else (data, labels, batches, schedule, reports,
files, resume, Ctrl-C, the encoder-state cache) is the same code for both.

Arrays cross this boundary as numpy: labels from `data.labels.collate`, log-mels from
`ExampleSet.mels`, adapter and optimizer tensors for the file writers. Encoder states stay in the
back end's own arrays (they are only ever handed back to it).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np


class TrainingBackend(Protocol):
    name: str  # "mlx" or "torch"
    model: object
    encoder_trained: bool  # adapters (or full fine-tuning) in the encoder: no state cache
    states_shape: Tuple[int, int]  # (audio frames, width) of one utterance's encoder states

    # ---- encoder states (frozen encoder)
    def encode(self, examples, indices: Sequence[int]) -> list:
        """Per-utterance encoder states, no gradient."""

    def states_nbytes(self, states) -> int: ...

    def states_numpy(self, states) -> np.ndarray: ...

    # ---- steps
    def start_training(self, args) -> None:
        """Make the optimizer (its rate is set by the loop before every update), seed, checkpointing."""

    def set_training(self, training: bool) -> None: ...

    def accumulate_gradients(self, examples, indices: List[int], states: Optional[list],
                             labels: Tuple[np.ndarray, np.ndarray, np.ndarray], accumulation: int) -> Tuple[float, float]:
        """Forward and backward of one micro-batch (gradients scaled by 1/accumulation and summed);
        returns (sum of token losses, number of target tokens)."""

    def update(self, learning_rate: float, max_grad_norm: float) -> None:
        """Clip, one optimizer step at this rate, clear the gradients."""

    def batch_loss(self, examples, indices: List[int], states: Optional[list],
                   labels: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Tuple[float, float]:
        """(sum of token losses, number of target tokens) without gradients."""

    def peak_memory_gb(self) -> float: ...

    # ---- tensors for the files
    def adapter_tensors(self) -> Dict[str, np.ndarray]:
        """The trainable weights in the shared names and layout (formats/adapter_files.py)."""

    def optimizer_tensors(self) -> Dict[str, np.ndarray]: ...

    def load_optimizer_tensors(self, tensors: Dict[str, np.ndarray]) -> None: ...

    def convert_legacy_optimizer_file(self, path, log):
        """An optimizer file of an earlier version (torch pickle) converted to safetensors, or a UserError."""

    # ---- decoding (test reports, base-style targets)
    def decode(self, examples, indices: List[int], states: Optional[list], language: str, task: str) -> List[str]:
        """Greedy transcripts without timestamps, language and task forced."""
