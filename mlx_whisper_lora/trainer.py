"""The training loop: steps, schedule, reports, evaluation, checkpoints, Ctrl-C and resume.

Checkpoints are written atomically (temporary file, then rename), so an interruption or a full disk
never leaves a half-written adapter. Each checkpoint has a matching optimizer state; resuming from
it continues the step count, the optimizer moments and the exact batch order.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from .adapters import ADAPTER_FILE, AdapterConfig, save_adapter_config, trainable_weights
from .data import epoch_batches
from .examples import ExampleSet
from .objective import collate, masked_cross_entropy

OPTIMIZER_FILE = "optimizer_state.safetensors"
METRICS_FILE = "metrics.jsonl"


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
    optimizer: str = "adamw"  # adam | adamw | sgd
    weight_decay: float = 0.0
    steps_per_report: int = 10
    steps_per_eval: int = 100
    val_batches: int = 25  # -1: the whole validation split
    save_every: int = 100
    seed: int = 0
    bucket: bool = True


# ---------------------------------------------------------------- pieces
def learning_rate_schedule(args: TrainingArgs) -> Callable:
    lr = args.learning_rate
    steps = max(1, args.iters - args.warmup)
    if args.lr_schedule == "cosine":
        main = optim.cosine_decay(lr, steps, lr * 0.0)
    elif args.lr_schedule == "linear":
        main = optim.linear_schedule(lr, 0.0, steps)
    elif args.lr_schedule == "constant":
        main = lambda step: mx.array(lr, dtype=mx.float32)  # noqa: E731
    else:
        raise ValueError(f"unknown lr schedule {args.lr_schedule!r}; use constant, cosine or linear")
    if args.warmup > 0:
        return optim.join_schedules([optim.linear_schedule(lr * 1e-3, lr, args.warmup), main], [args.warmup])
    return main


def make_optimizer(args: TrainingArgs) -> optim.Optimizer:
    schedule = learning_rate_schedule(args)
    if args.optimizer == "adamw":
        return optim.AdamW(learning_rate=schedule, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return optim.Adam(learning_rate=schedule)
    if args.optimizer == "sgd":
        return optim.SGD(learning_rate=schedule, momentum=0.9, weight_decay=args.weight_decay)
    raise ValueError(f"unknown optimizer {args.optimizer!r}; use adamw, adam or sgd")


def encoder_is_trained(model) -> bool:
    return bool(tree_flatten(model.encoder.trainable_parameters()))


def set_grad_checkpoint(model, enabled: bool) -> None:
    for block in list(model.encoder.blocks) + list(model.decoder.blocks):
        block.grad_checkpoint = enabled


def batch_inputs(model, examples: ExampleSet, indices: List[int]) -> tuple:
    """(audio, is_states): encoder states (cached, or from a frozen encoder) or log-mels."""
    if examples.caches_encoder:
        return examples.encoder_states(indices), True
    if encoder_is_trained(model):
        return examples.mels(indices), False
    return mx.stop_gradient(model.embed_audio(examples.mels(indices))), True


def loss_fn(model, audio: mx.array, inputs: mx.array, targets: mx.array, mask: mx.array, states: bool):
    """Mean token loss and the number of tokens. `states`: audio holds encoder outputs already."""
    if states:
        logits = model.decoder(inputs, audio)[0]
    else:
        logits = model(audio, inputs)
    total, count = masked_cross_entropy(logits, targets, mask)
    return total / mx.maximum(count, 1.0), count


def evaluate_loss(model, examples: ExampleSet, batch_size: int, num_batches: int = -1) -> float:
    """Token-weighted mean loss over the first `num_batches` batches (-1: all) in a fixed order."""
    was_training = model.training
    model.eval()
    batches = epoch_batches(examples.lengths, batch_size, seed=0, epoch=0)
    if num_batches >= 0:
        batches = batches[:num_batches]
    total = count = 0.0
    for indices in batches:
        indices = examples.usable(indices)
        if not indices:
            continue
        audio, states = batch_inputs(model, examples, indices)
        inputs, targets, mask = collate([examples.labels[i] for i in indices], pad_token=0)
        loss, n = loss_fn(model, audio, inputs, targets, mask, states)
        mx.eval(loss, n)
        total += loss.item() * n.item()
        count += n.item()
    model.train(was_training)
    return total / count if count else float("nan")


def peak_memory_gb() -> float:
    """Peak resident memory of this process (MLX's own counter where it has one)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # kB on Linux
    if sys.platform == "darwin":
        rss /= 1024
    try:
        mlx_peak = mx.get_peak_memory() / 1e9
    except AttributeError:
        mlx_peak = 0.0
    return round(max(rss, mlx_peak), 3)


def validates_at(step: int, start: int, args) -> bool:
    """Validation loss is measured after the run's first step (the baseline), every steps_per_eval, and at the end."""
    return step % args.steps_per_eval == 0 or step == args.iters or step == start + 1


def report_entry(step: int, window: dict, lr: float, peak_gb: float) -> tuple:
    """(metrics.jsonl entry, the line shown) for the steps accumulated in `window`."""
    entry = {
        "step": step,
        "train_loss": round(window["loss"] / max(window["tokens"], 1), 5),
        "learning_rate": float(f"{lr:.6g}"),
        "iterations_per_second": round(window["steps"] / window["seconds"], 4),
        "audio_seconds_per_second": round(window["audio"] / window["seconds"], 3),
        "tokens": int(window["tokens"]),
        "peak_memory_gb": peak_gb,
    }
    line = (f"step {step}: train loss {entry['train_loss']:.3f}, lr {lr:.2e}, "
            f"{entry['iterations_per_second']:.3f} it/s, {entry['audio_seconds_per_second']:.1f} audio s/s, "
            f"peak mem {peak_gb:.2f} GB")
    return entry, line


def _checkpoint_name(step: int, kind: str) -> str:
    return f"{step:07d}_{kind}"


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(model, optimizer, folder: Path, step: int, keep_step_copy: bool) -> None:
    """adapters.safetensors + optimizer_state.safetensors (and step-numbered copies), atomically."""
    meta = {"format": "mlx", "step": str(step)}
    weights = trainable_weights(model)
    state = dict(tree_flatten(optimizer.state))
    names = [(ADAPTER_FILE, weights), (OPTIMIZER_FILE, state)]
    if keep_step_copy:
        names += [(_checkpoint_name(step, ADAPTER_FILE), weights), (_checkpoint_name(step, OPTIMIZER_FILE), state)]
    for name, arrays in names:
        path = folder / name
        tmp = folder / (name[: -len(".safetensors")] + ".tmp.safetensors")
        try:
            mx.save_safetensors(str(tmp), arrays, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def optimizer_file_for(adapter_file: Path) -> Path:
    name = adapter_file.name
    if name == ADAPTER_FILE:
        return adapter_file.with_name(OPTIMIZER_FILE)
    return adapter_file.with_name(name.replace(ADAPTER_FILE, OPTIMIZER_FILE))


def restore_optimizer(optimizer, model, adapter_file: Path, log: Callable) -> int:
    """Load the optimizer state saved with `adapter_file`; returns the step to continue from (0 if none)."""
    step = 0
    try:
        step = int(mx.load(str(adapter_file), return_metadata=True)[1].get("step", 0))
    except Exception:  # noqa: BLE001 - a file written elsewhere may lack metadata
        step = 0
    state_file = optimizer_file_for(adapter_file)
    if not state_file.exists():
        log(f"resume: no optimizer state beside {adapter_file}; the weights are loaded, the optimizer starts fresh at step 0")
        return 0
    arrays, meta = mx.load(str(state_file), return_metadata=True)
    if int(meta.get("step", -1)) != step:
        log(f"resume: {state_file} is from step {meta.get('step')}, the adapters from step {step}; "
            "starting the optimizer fresh at step 0")
        return 0
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(arrays.items()))
    log(f"resume: continuing from step {step} with its optimizer state and batch order")
    return step


# ---------------------------------------------------------------- the loop
class _StopFlag:
    """First Ctrl-C: finish the current step, save, stop. Second: stop at once."""

    def __init__(self, log):
        self.requested = False
        self.log = log
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\ninterrupt: finishing this step, then saving (press Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def train(
    model,
    config: AdapterConfig,
    args: TrainingArgs,
    train_set: ExampleSet,
    valid_set: Optional[ExampleSet],
    adapter_dir: Path,
    resume_file: Optional[Path] = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Dict:
    """Train the model's trainable parameters; returns a summary (steps done, last losses, status)."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    save_adapter_config(config, adapter_dir)
    mx.random.seed(args.seed)
    set_grad_checkpoint(model, args.grad_checkpoint)
    optimizer = make_optimizer(args)
    start = restore_optimizer(optimizer, model, Path(resume_file), log) if resume_file else 0
    model.train()
    states = not encoder_is_trained(model)  # batch_inputs then hands out encoder states
    loss_and_grad = nn.value_and_grad(model, lambda m, a, i, t, k: loss_fn(m, a, i, t, k, states))

    metrics_path = adapter_dir / METRICS_FILE
    summary = {"status": "done", "start_step": start, "steps": start}

    def record(entry: dict) -> None:
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def save(step: int, final: bool) -> bool:
        try:
            save_checkpoint(model, optimizer, adapter_dir, step, keep_step_copy=not final)
            return True
        except OSError as e:
            log(f"warning: could not write the checkpoint of step {step} to {adapter_dir}: {e.strerror or e}; "
                "the previous checkpoint is intact" + ("" if final else "; training goes on and saves again later"))
            record({"step": step, "event": "checkpoint_failed", "error": str(e)})
            return False

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=args.iters, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
    window = {"loss": 0.0, "tokens": 0.0, "seconds": 0.0, "audio": 0.0, "steps": 0}
    last_val = None
    step = start
    epochs_cache: Dict[int, list] = {}

    def next_batch(micro: int) -> List[int]:
        per_epoch = math.ceil(len(train_set) / args.batch_size)
        epoch, index = divmod(micro, per_epoch)
        if epoch not in epochs_cache:
            epochs_cache.clear()
            epochs_cache[epoch] = epoch_batches(train_set.lengths, args.batch_size, args.seed, epoch, args.bucket)
        return epochs_cache[epoch][index]

    with _StopFlag(log) as stop:
        try:
            while step < args.iters:
                tic = time.perf_counter()
                grads = None
                loss_sum = tok_sum = audio_seconds = 0.0
                for k in range(args.grad_accumulation_steps):
                    indices = train_set.usable(next_batch(step * args.grad_accumulation_steps + k))
                    if not indices:
                        continue
                    audio, _ = batch_inputs(model, train_set, indices)
                    inputs, targets, mask = collate([train_set.labels[i] for i in indices], pad_token=0)
                    (loss, ntok), g = loss_and_grad(model, audio, inputs, targets, mask)
                    grads = g if grads is None else tree_map(lambda a, b: a + b, grads, g)
                    mx.eval(loss, ntok, grads)
                    loss_sum += loss.item() * ntok.item()
                    tok_sum += ntok.item()
                    audio_seconds += train_set.seconds(indices)
                if grads is None:
                    raise RuntimeError("no readable audio in this batch")
                if args.grad_accumulation_steps > 1:
                    grads = tree_map(lambda a: a / args.grad_accumulation_steps, grads)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    grads, _ = optim.clip_grad_norm(grads, args.max_grad_norm)
                optimizer.update(model, grads)
                mx.eval(model.parameters(), optimizer.state)
                step += 1
                window["loss"] += loss_sum
                window["tokens"] += tok_sum
                window["audio"] += audio_seconds
                window["seconds"] += time.perf_counter() - tic
                window["steps"] += 1
                lr = float(optimizer.learning_rate.item()) if isinstance(optimizer.learning_rate, mx.array) else float(optimizer.learning_rate)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / max(tok_sum, 1):.3f}", lr=f"{lr:.2e}")
                if step % args.steps_per_report == 0 or step == args.iters:
                    entry, line = report_entry(step, window, lr, peak_memory_gb())
                    record(entry)
                    (bar.write if bar is not None else log)(line)
                    summary["train_loss"] = entry["train_loss"]
                    window = {k: 0.0 for k in window}
                if valid_set is not None and len(valid_set) and validates_at(step, start, args):
                    tic = time.perf_counter()
                    last_val = evaluate_loss(model, valid_set, args.batch_size, args.val_batches)
                    record({"step": step, "val_loss": round(last_val, 5), "val_seconds": round(time.perf_counter() - tic, 2)})
                    (bar.write if bar is not None else log)(f"step {step}: val loss {last_val:.3f}")
                    summary["val_loss"] = last_val
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
    summary["steps"] = step
    saved = save(step, final=True)
    summary["saved"] = saved
    if summary["status"] == "interrupted":
        log(f"interrupted at step {step}; adapters saved in {adapter_dir}. Resume with "
            f"--resume-adapter-file {adapter_dir / ADAPTER_FILE}")
    summary["skipped_audio"] = dict(train_set.failed)
    return summary

