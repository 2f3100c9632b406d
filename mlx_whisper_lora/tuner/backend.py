"""What the shared training loop and evaluation ask of a back end (MLX: backend_mlx/engine.py,
PyTorch: backend_torch/engine.py). Everything else (data, labels, batches, schedule, reports,
files, resume, Ctrl-C, the encoder-state cache) is the same code for both.

The interface is five small parts by concern (the model and its adapters, encoder states, the training step,
tensors for the files, decoding), which `TrainingBackend` joins. Arrays cross this boundary as numpy: labels from `data.labels.collate`, log-mels from
`ExampleSet.mels`, adapter and optimizer tensors for the file writers. Encoder states stay in the
back end's own arrays while cached in memory; states spilled to disk come back as numpy rows, which
the back end converts.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np


class ModelAdapters(Protocol):
    """The model and its adapters (recipes/run.py)."""

    def apply_adapters(self, config) -> None:
        """Freeze the model and add adapters as `config` (formats/adapter_config.AdapterConfig) says."""

    def load_adapter_weights(self, weights: Dict[str, np.ndarray], source) -> None:
        """Set the adapters' weights (the files' names and layout), checking every name and shape."""

    def load_adapters(self, path, scale: float = 1.0):
        """Add the adapters saved at `path` (either back end's, or PEFT's), LoRA updates times `scale`;
        returns their AdapterConfig."""

    def count_parameters(self) -> Tuple[int, int]:
        """(trainable, total)."""

class EncoderStates(Protocol):
    """Encoder states of a frozen encoder, and what they cost (tuner/encoder_cache.py)."""

    def encode(self, examples, indices: Sequence[int], for_training: bool = True) -> list:
        """Per-utterance encoder states, no gradient; `for_training`: extras that only training steps
        use may be kept with them (the torch back end's cross-attention K/V)."""

    def states_nbytes(self, states) -> int:
        """Bytes of the states themselves (counted against the cache's memory)."""

    def extras_nbytes(self, states) -> int:
        """Bytes of the extras kept with the states (kept only while the cache's memory allows)."""

    def without_extras(self, states): ...

    def states_numpy(self, states) -> np.ndarray:
        """The states alone as float32 numpy (written to the cache's file when memory is full)."""

class TrainingStep(Protocol):
    """One optimizer step of the shared loop (tuner/loop.py), and the loss without one (validation)."""

    def start_training(self, args) -> None:
        """Make the optimizer (its rate is set by the loop before every update), seed, checkpointing."""

    def set_training(self, training: bool) -> None: ...

    def accumulate_gradients(self, examples, indices: List[int], states: Optional[list],
                             labels: Tuple[np.ndarray, np.ndarray, np.ndarray], scale: float,
                             augment=None) -> Tuple[float, float]:
        """Forward and backward of one micro-batch (its audio changed by `augment`, an Augmenter, when given
        and no encoder states are): the gradient of its mean token loss times `scale`
        (the loop's share of this micro-batch in the step: 1/accumulation in one process, and its
        tokens over all processes' tokens in a data-parallel run) is added to the gradients;
        returns (sum of token losses, number of target tokens)."""

    def update(self, learning_rate: float, max_grad_norm: float) -> None:
        """In a data-parallel run first sum the gradients over the processes; then clip, one
        optimizer step at this rate, clear the gradients."""

    def batch_loss(self, examples, indices: List[int], states: Optional[list],
                   labels: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Tuple[float, float]:
        """(sum of token losses, number of target tokens) without gradients."""

    def peak_memory_gb(self) -> float: ...

class FileTensors(Protocol):
    """The tensors the file writers take and give back (formats/adapter_files.py, checkpoints, resume)."""

    def adapter_tensors(self) -> Dict[str, np.ndarray]:
        """The trainable weights in the shared names and layout (formats/adapter_files.py)."""

    def optimizer_tensors(self) -> Dict[str, np.ndarray]: ...

    def load_optimizer_tensors(self, tensors: Dict[str, np.ndarray]) -> None: ...

    def convert_legacy_optimizer_file(self, path, log):
        """An optimizer_state.pt of an earlier version: the safetensors file converted from it, or None
        (logged why) when this back end cannot use it."""

class Decoding(Protocol):
    """Decoding for test reports, base-style targets, self-replay and alignment heads."""

    def decoding_model(self):
        """The model behind the interface `inference/` decodes and aligns through (embed_audio,
        logits, decoder, alignment_scores, alignment_heads), in evaluation mode."""

    def adapters_off(self):
        """A context in which the model is the base model: every adapter swapped out (the base
        model's passes before training decode faster without adapters, zero as they are then)."""

    def decode(self, examples, indices: List[int], states: Optional[list], language: str, task: str,
               sample_len: Optional[int] = None, stop_loops_at: Optional[float] = None) -> List[str]:
        """Greedy transcripts without timestamps, language and task forced, at most `sample_len` tokens
        each (default: half the text context); a row stops once its text compresses past
        `stop_loops_at` (inference.decoding.looping_rows)."""


@runtime_checkable
class TrainingBackend(ModelAdapters, EncoderStates, TrainingStep, FileTensors, Decoding, Protocol):
    """Everything a back end offers the loop, scoring and recipes: the five parts above and these attributes."""

    name: str  # "mlx" or "torch"
    model: object  # the back end's Whisper: dims, is_multilingual, num_languages, source, folder, case_style, punctuation
    encoder_trained: bool  # adapters (or full fine-tuning) in the encoder: no state cache
    states_shape: Tuple[int, int]  # (audio frames, width) of one utterance's encoder states
    world: object  # the processes of a data-parallel run (tuner/distributed.py's World), None for one
