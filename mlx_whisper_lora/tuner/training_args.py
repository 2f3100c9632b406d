"""What the training loop needs to know, as one dataclass (`RunConfig.training_args()` fills it from a run's options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingArgs:
    iters: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine | linear
    warmup: int = 0
    grad_accumulation_steps: int = 1
    grad_checkpoint: bool = False
    max_grad_norm: float = 1.0  # 0 disables clipping
    optimizer: str = "adamw"  # adam | adamw | sgd (the back end builds it)
    weight_decay: float = 0.0
    augment: tuple = ()  # data/augment.py KINDS; the encoder-state cache is off while they apply
    label_smoothing: float = 0.0  # training loss only; validation and test losses are plain
    replay_distill: bool = False  # replayed rows learn the base model's distribution, not their tokens
    steps_per_report: int = 10
    steps_per_eval: int = 100
    val_batches: int = 25  # -1: the whole validation split
    early_stop: int = 0  # stop after this many validations without a better validation WER (0: never)
    best_checkpoint: bool = True  # end with the adapters of the best validation (step 0, the base model, included)
    save_every: int = 100
    seed: int = 0
    bucket: bool = True
    encoder_cache: bool = True  # keep frozen-encoder states (the loop asks the back end whether the encoder is frozen)
    cache_memory_gb: float = 4.0
