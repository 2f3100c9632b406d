"""The training loop in PyTorch, with the MLX loop's data order, reports, files and resume.

Same batches (`data.epoch_batches`), same objective, same metrics.jsonl keys, same adapter files
(adapters.safetensors in MLX names, step in the metadata); the optimizer state is PyTorch's own
(`optimizer_state.pt`). fp16/bf16 autocast on CUDA, gradient checkpointing, frozen-encoder cache.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..adapters import ADAPTER_FILE, AdapterConfig, save_adapter_config
from ..data import epoch_batches
from ..examples import EncoderCache, ExampleSet
from ..objective import collate
from ..trainer import METRICS_FILE, TrainingArgs, _StopFlag, peak_memory_gb, report_entry, validates_at
from .lora import save_adapter_weights, trainable_weights
from .training import masked_cross_entropy

OPTIMIZER_FILE = "optimizer_state.pt"


def lr_lambda(args: TrainingArgs) -> Callable[[int], float]:
    """The MLX schedules as a multiplier of the base rate (linear warmup from 1e-3, then the schedule)."""
    steps = max(1, args.iters - args.warmup)

    def factor(step: int) -> float:
        if step < args.warmup:
            return 1e-3 + (1 - 1e-3) * step / args.warmup
        t = min(step - args.warmup, steps) / steps
        if args.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if args.lr_schedule == "linear":
            return 1 - t
        return 1.0

    return factor


class _Inputs:
    """Log-mels, or (frozen encoder) cached encoder states, as torch tensors on the device.

    With the encoder frozen, its states are computed once per utterance and kept: in memory up to
    `memory_limit_bytes`, then in a memory-mapped file. While memory allows, the decoder's
    cross-attention base keys and values (frozen projections of those states) are kept as well, so
    a step computes only the adapters' terms over the audio frames.
    """

    def __init__(self, model, examples: ExampleSet, device, cache: bool, memory_limit_bytes: int = 4 << 30,
                 folder: Optional[Path] = None):
        self.model, self.examples, self.device = model, examples, device
        self.encoder_trained = any(p.requires_grad for p in model.encoder.parameters())
        self.caching = cache and not self.encoder_trained
        self.kv_caching = self.caching and model.decoder.cross_kv_cacheable()
        self.limit, self.used = memory_limit_bytes, 0
        self.states: Dict[int, torch.Tensor] = {}
        self.kv: Dict[int, list] = {}
        # states beyond the memory limit: the MLX path's memory-mapped file, used for its disk part only
        self.spilled = EncoderCache(len(examples), model.dims.n_audio_ctx, model.dims.n_audio_state, 0, folder)

    @property
    def on_disk(self) -> np.ndarray:
        return self.spilled.on_disk

    @property
    def disk_path(self) -> Optional[str]:
        return self.spilled._path

    def _mels(self, indices):
        return torch.from_numpy(np.array(self.examples.mels(indices))).to(self.device)

    def _keep(self, i: int, states: torch.Tensor) -> None:
        nbytes = states.numel() * states.element_size()
        if self.used + nbytes <= self.limit:
            self.states[i] = states.clone()
            self.used += nbytes
        else:
            self.spilled.spill(i, states.float().cpu().numpy())
            return
        if self.kv_caching:
            kv = [tuple(t[0] for t in layer) for layer in self.model.decoder.base_cross_kv(states[None])]
            kv_bytes = sum(t.numel() * t.element_size() for layer in kv for t in layer)
            if self.used + kv_bytes <= self.limit:
                self.kv[i] = kv
                self.used += kv_bytes

    def _get(self, i: int) -> torch.Tensor:
        if i in self.states:
            return self.states[i]
        return torch.from_numpy(np.asarray(self.spilled.disk[i])).to(self.device)

    def __call__(self, indices: List[int]):
        """(audio, is_states, cross_kv or None)."""
        if self.encoder_trained:
            return self._mels(indices), False, None
        missing = [i for i in indices if not self.caching or (i not in self.states and not self.on_disk[i])]
        if missing:
            with torch.no_grad():
                states = self.model.embed_audio(self._mels(missing))
            if not self.caching:
                return states, True, None
            for i, s in zip(missing, states):
                self._keep(i, s)
        audio = torch.stack([self._get(i) for i in indices])
        if not all(i in self.kv for i in indices):
            return audio, True, None
        layers = len(self.kv[indices[0]])
        kv = [tuple(torch.stack([self.kv[i][layer][j] for i in indices]) for j in range(2)) for layer in range(layers)]
        return audio, True, kv

    def close(self) -> None:
        self.spilled.close()


def _loss(model, audio, is_states, cross_kv, inputs, targets, mask, autocast_dtype):
    """Mean loss over the target tokens; logits are computed only at those positions."""
    with torch.autocast(audio.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        xa = audio if is_states else model.embed_audio(audio)
        hidden = model.decoder.hidden(inputs, xa, cross_kv)
        keep = mask > 0
        logits = model.decoder.logits(hidden[keep])
    count = keep.sum()
    total = torch.nn.functional.cross_entropy(logits.float(), targets[keep].long(), reduction="sum")
    return total / count.clamp(min=1), count


def evaluate_loss(model, examples: ExampleSet, inputs_of: _Inputs, batch_size: int, num_batches: int,
                  device, autocast_dtype) -> float:
    model.eval()
    batches = epoch_batches(examples.lengths, batch_size, seed=0, epoch=0)
    if num_batches >= 0:
        batches = batches[:num_batches]
    total = count = 0.0
    with torch.no_grad():
        for indices in batches:
            indices = examples.usable(indices)
            if not indices:
                continue
            audio, is_states, kv = inputs_of(indices)
            toks = [torch.from_numpy(np.array(a)).to(device) for a in collate([examples.labels[i] for i in indices], 0)]
            loss, n = _loss(model, audio, is_states, kv, *toks, autocast_dtype)
            total += loss.item() * n.item()
            count += n.item()
    model.train()
    return total / count if count else float("nan")


def _save(model, optimizer, scheduler, folder: Path, step: int, copy: bool) -> None:
    names = [ADAPTER_FILE] + ([f"{step:07d}_{ADAPTER_FILE}"] if copy else [])
    for name in names:
        save_adapter_weights(model, folder / name, metadata={"step": str(step)})
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    for name in [OPTIMIZER_FILE] + ([f"{step:07d}_{OPTIMIZER_FILE}"] if copy else []):
        tmp = folder / (name + ".tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def train(model, config: AdapterConfig, args: TrainingArgs, train_set: ExampleSet, valid_set: Optional[ExampleSet],
          adapter_dir: Path, resume_file: Optional[Path] = None, log: Callable = print, progress: bool = True,
          device: str = "cpu", dtype: str = "float32", encoder_cache: bool = True,
          cache_memory_gb: float = 4.0) -> Dict:
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    save_adapter_config(config, adapter_dir)
    torch.manual_seed(args.seed)
    autocast_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if device != "cuda" and autocast_dtype == torch.float16:
        log("float16 autocast is for CUDA; training in float32 on the CPU (bfloat16 works there)")
        autocast_dtype = None
    model.encoder.grad_checkpoint = model.decoder.grad_checkpoint = bool(args.grad_checkpoint)
    params = list(trainable_weights(model).values())
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate,
                                      weight_decay=args.weight_decay if args.optimizer == "adamw" else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    start = 0
    if resume_file is not None:
        state_file = Path(resume_file).with_name(Path(resume_file).name.replace(ADAPTER_FILE, OPTIMIZER_FILE))
        if state_file.exists():
            state = torch.load(state_file, map_location=device, weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log(f"resume: continuing from step {start} with its optimizer state and batch order")
        else:
            log(f"resume: no optimizer state beside {resume_file}; the optimizer starts fresh at step 0")
    limit = int(cache_memory_gb * (1 << 30))
    train_inputs = _Inputs(model, train_set, device, encoder_cache, limit, adapter_dir)
    valid_inputs = _Inputs(model, valid_set, device, encoder_cache, limit // 8, adapter_dir) if valid_set is not None else None
    metrics_path = adapter_dir / METRICS_FILE

    def record(entry):
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def save(step, final):
        try:
            _save(model, optimizer, scheduler, adapter_dir, step, copy=not final)
            return True
        except OSError as e:
            log(f"warning: could not write the checkpoint of step {step} to {adapter_dir}: {e.strerror or e}; "
                "the previous checkpoint is intact")
            return False

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=args.iters, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    summary = {"status": "done", "start_step": start}
    window = {"loss": 0.0, "tokens": 0.0, "seconds": 0.0, "audio": 0.0, "steps": 0}
    per_epoch = math.ceil(len(train_set) / args.batch_size)
    epochs: Dict[int, list] = {}
    model.train()
    step = start
    say = lambda m: (bar.write if bar is not None else log)(m)  # noqa: E731
    with _StopFlag(log) as stop:
        try:
            while step < args.iters:
                tic = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss_sum = tok_sum = audio_seconds = 0.0
                for k in range(args.grad_accumulation_steps):
                    epoch, index = divmod(step * args.grad_accumulation_steps + k, per_epoch)
                    if epoch not in epochs:
                        epochs.clear()
                        epochs[epoch] = epoch_batches(train_set.lengths, args.batch_size, args.seed, epoch, args.bucket)
                    indices = train_set.usable(epochs[epoch][index])
                    if not indices:
                        continue
                    audio, is_states, kv = train_inputs(indices)
                    toks = [torch.from_numpy(np.array(a)).to(device) for a in collate([train_set.labels[i] for i in indices], 0)]
                    loss, n = _loss(model, audio, is_states, kv, *toks, autocast_dtype)
                    scaler.scale(loss / args.grad_accumulation_steps).backward()
                    loss_sum += loss.item() * n.item()
                    tok_sum += n.item()
                    audio_seconds += train_set.seconds(indices)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                window["loss"] += loss_sum
                window["tokens"] += tok_sum
                window["audio"] += audio_seconds
                window["seconds"] += time.perf_counter() - tic
                window["steps"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / max(tok_sum, 1):.3f}", lr=f"{lr:.2e}")
                if step % args.steps_per_report == 0 or step == args.iters:
                    peak = peak_memory_gb()
                    if device == "cuda":
                        peak = round(torch.cuda.max_memory_allocated() / 1e9, 3)
                    entry, line = report_entry(step, window, lr, peak)
                    record(entry)
                    say(line)
                    summary["train_loss"] = entry["train_loss"]
                    window = {k: 0.0 for k in window}
                if valid_set is not None and len(valid_set) and validates_at(step, start, args):
                    val = evaluate_loss(model, valid_set, valid_inputs, args.batch_size, args.val_batches, device,
                                        autocast_dtype)
                    record({"step": step, "val_loss": round(val, 5)})
                    say(f"step {step}: val loss {val:.3f}")
                    summary["val_loss"] = val
                if args.save_every and step % args.save_every == 0 and step < args.iters:
                    save(step, final=False)
                if stop.requested:
                    summary["status"] = "interrupted"
                    break
        except KeyboardInterrupt:
            summary["status"] = "interrupted"
        finally:
            if bar is not None:
                bar.close()
            for inputs_of in (train_inputs, valid_inputs):
                if inputs_of is not None:
                    inputs_of.close()
    summary["steps"] = step
    summary["saved"] = save(step, final=True)
    model.eval()
    if summary["status"] == "interrupted":
        log(f"interrupted at step {step}; adapters saved in {adapter_dir}. Resume with "
            f"--resume-adapter-file {adapter_dir / ADAPTER_FILE}")
    return summary
