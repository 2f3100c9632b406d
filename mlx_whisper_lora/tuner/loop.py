"""The training loop, one for both back ends: batches, schedule, reports, validation, checkpoints,
resume and Ctrl-C. The back end does only the framework parts (see `tuner/backend.py`).

Checkpoints are `adapters.safetensors` + `optimizer_state.safetensors`, the step in both files'
metadata, written atomically (a temporary file, then a rename), so an interruption or a full disk
never leaves a half-written one. Resuming from a checkpoint continues the step count, the
optimizer moments and the exact batch order.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..data.examples import ExampleSet
from ..data.labels import collate
from ..data.sampler import epoch_batches
from ..errors import UserError
from ..formats.adapter_files import ADAPTER_FILE, optimizer_file_for, saved_step, write_adapter_tensors
from ..formats.safetensors_io import read_metadata, read_safetensors, write_safetensors
from ..data.augment import Augmenter
from .distributed import PeerLost, peer_lost, world_of
from .encoder_cache import CachedStates
from .streamed_batches import IndexedBatches, StreamedBatches
from .schedule import learning_rate_at
from .training_args import TrainingArgs

METRICS_FILE = "metrics.jsonl"


def validates_at(step: int, start: int, args: TrainingArgs) -> bool:
    """Validation loss is measured after the run's first step (the baseline), every steps_per_eval, and at the end."""
    return step % args.steps_per_eval == 0 or step == args.iters or step == start + 1


MEMORIZING_RATIO = 4.0  # validation loss this many times the training loss: the adapters learn the rows by heart


class BestCheckpoint:
    """The validation that scored best so far (WER first, then loss: a lower WER is what users keep an adapter
    for) and its adapter weights, kept in memory; step 0 (the adapters still zero: the base model) is a candidate."""

    def __init__(self):
        self.step, self.wer, self.loss, self.weights = None, None, None, None
        self.stale = 0  # validations since the best
        self.base_wer: Optional[float] = None  # step 0's

    def offer(self, backend, step: int, wer: Optional[float], loss: float) -> bool:
        if step == 0:
            self.base_wer = wer
        key = (wer if wer is not None else float("inf"), loss)
        if self.step is not None and key >= (self.wer if self.wer is not None else float("inf"), self.loss):
            self.stale += 1
            return False
        self.step, self.wer, self.loss, self.stale = step, wer, loss, 0
        self.weights = {k: np.array(v, copy=True) for k, v in backend.adapter_tensors().items()}
        return True

    def describe(self) -> str:
        score = f"validation WER {self.wer:.2f}%, loss {self.loss:.3f}" if self.wer is not None else \
            f"validation loss {self.loss:.3f}"
        return f"step {self.step}" + (" (the base model: the adapters still zero)" if self.step == 0 else "") + \
            f", {score}"


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


class StopFlag:
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


# ---------------------------------------------------------------- inputs and losses
def batch_states(states: Optional[CachedStates], indices: List[int]):
    """Cached encoder states for a batch, or None (the back end then reads the log-mels)."""
    return states(indices) if states is not None else None


def caches_training_states(backend, args: TrainingArgs, streamed: bool) -> bool:
    """Whether training keeps the frozen encoder's states: not for a stream, nor while augmentation
    changes the audio every step, nor when the encoder trains."""
    return not streamed and not args.augment and not backend.encoder_trained and bool(args.encoder_cache)


def cached_states(backend, examples: Optional[ExampleSet], args: TrainingArgs, folder: Optional[Path],
                  share: float = 1.0) -> Optional[CachedStates]:
    """An encoder-state cache for the example set when the encoder is frozen (and caching is on)."""
    if examples is None or backend.encoder_trained or not args.encoder_cache:
        return None
    return CachedStates(examples, backend, int(args.cache_memory_gb * share * (1 << 30)), folder, args.batch_size)


def evaluate_loss(backend, examples: ExampleSet, batch_size: int, num_batches: int = -1,
                  states: Optional[CachedStates] = None) -> float:
    """Token-weighted mean loss over the first `num_batches` batches (-1: all) in a fixed order
    (in a data-parallel run each process takes its share of every batch and the sums are added)."""
    world = world_of(backend)
    backend.set_training(False)
    batches = epoch_batches(examples.lengths, batch_size, seed=0, epoch=0)
    if num_batches >= 0:
        batches = batches[:num_batches]
    total = count = 0.0
    for indices in batches:
        indices = examples.usable(world.shard(indices))
        if not indices:
            continue
        loss_sum, tokens = backend.batch_loss(examples, indices, batch_states(states, indices),
                                              collate([examples.labels[i] for i in indices], pad_token=0))
        total += loss_sum
        count += tokens
    if world.parallel:
        total, count = (float(v) for v in world.sum([total, count]))
    return total / count if count else float("nan")


# ---------------------------------------------------------------- checkpoints
def checkpoint_names(step: int, keep_step_copy: bool) -> List[str]:
    names = [ADAPTER_FILE]
    return names + ([f"{step:07d}_{ADAPTER_FILE}"] if keep_step_copy else [])


def previous_state_file(state_file: Path) -> Path:
    """Where the optimizer state of the checkpoint before stays while a new one is written."""
    return state_file.with_name(state_file.stem + ".previous" + state_file.suffix)


def save_checkpoint(backend, folder: Path, step: int, keep_step_copy: bool) -> None:
    """Adapters and optimizer state (and step-numbered copies), each file written atomically, in an
    order that a kill at any moment cannot turn into a disagreeing pair: the current optimizer state
    is first kept as `.previous`, then the new one is written, then the adapters. Resuming picks the
    optimizer state whose step matches the adapters'."""
    weights, state = backend.adapter_tensors(), backend.optimizer_tensors()
    meta = {"format": "mlx", "step": str(step), "back_end": backend.name}
    for name in checkpoint_names(step, keep_step_copy):
        state_file = optimizer_file_for(folder / name)
        if state_file.exists():
            os.replace(state_file, previous_state_file(state_file))
        write_safetensors(state_file, state, meta)
        write_adapter_tensors(folder / name, weights, step)


def restore_optimizer(backend, adapter_file: Path, log: Callable) -> int:
    """Load the optimizer state saved with `adapter_file`; returns the step to continue from (0 if none)."""
    step = saved_step(adapter_file)
    state_file = optimizer_file_for(adapter_file)
    if state_file is not None and not state_file.exists() and state_file.with_suffix(".pt").exists():
        state_file = backend.convert_legacy_optimizer_file(state_file.with_suffix(".pt"), log)
        if state_file is None:  # the back end logged why
            return 0
    candidates = [f for f in (state_file, state_file and previous_state_file(state_file)) if f is not None and f.exists()]
    if not candidates:
        log(f"resume: no optimizer state beside {adapter_file}; the weights are loaded, the optimizer starts fresh at step 0")
        return 0
    found = [(f, read_metadata(f)) for f in candidates]  # headers only: pick the file, then read its tensors
    match = next(((f, meta) for f, meta in found if int(meta.get("step", -1)) == step), None)
    if match is None:
        steps = ", ".join(f"{f.name}: step {meta.get('step')}" for f, meta in found)
        log(f"resume: the adapters are from step {step}, the optimizer state is not ({steps}); "
            "the weights are loaded, the optimizer starts fresh at step 0")
        return 0
    state_file, meta = match
    saved_by = meta.get("back_end", "mlx")  # files of version 0.1 are the MLX back end's
    if saved_by != backend.name:
        log(f"resume: {state_file} holds the {saved_by} back end's optimizer state, which the {backend.name} back end "
            "cannot read; the weights are loaded, the optimizer starts fresh at step 0")
        return 0
    backend.load_optimizer_tensors(read_safetensors(state_file))
    log(f"resume: continuing from step {step} with its optimizer state ({state_file.name}) and batch order")
    return step


# ---------------------------------------------------------------- the loop
def train(backend, train_set: Union[ExampleSet, StreamedBatches], valid_set: Optional[ExampleSet], args: TrainingArgs,
          adapter_dir: Path,
          resume_file: Optional[Path] = None, log: Callable[[str], None] = print, progress: bool = True,
          on_metrics: Optional[Callable[[dict], None]] = None, warm_states: Sequence[CachedStates] = (),
          valid_wer: Optional[Callable[[Optional[CachedStates]], float]] = None) -> Dict:
    """Train the back end's trainable weights; returns a summary (steps done, last losses, status).
    Every metrics.jsonl entry also goes to `on_metrics` (TensorBoard, wandb: tuner/reporting.py).
    `train_set`: an example set, or batches read from a stream (--streaming). `warm_states`: encoder
    states computed before training for some of its audio, taken instead of encoding it again, then closed.
    `valid_wer`: the validation set's normalized WER (percent) with the weights as they are; with it each
    validation scores WER too, step 0 (the base model) is scored first, the run ends with the best validation's
    adapters (args.best_checkpoint) and stops after args.early_stop validations without a better one."""
    adapter_dir = Path(adapter_dir)
    world = world_of(backend)  # in a data-parallel run only the main process writes files
    if world.is_main:
        adapter_dir.mkdir(parents=True, exist_ok=True)
    backend.start_training(args)
    start = restore_optimizer(backend, Path(resume_file), log) if resume_file else 0
    source = train_set if isinstance(train_set, StreamedBatches) else \
        IndexedBatches(train_set, args.batch_size, args.seed, args.bucket, world.shard)
    augmenter = Augmenter(args.augment, args.seed) if args.augment else None
    if augmenter is not None and not backend.encoder_trained and args.encoder_cache:
        log(f"augmentation ({', '.join(args.augment)}) changes the audio every step: the frozen encoder's states are "
            "computed every step instead of cached")
    train_states = cached_states(backend, train_set, args, adapter_dir) \
        if caches_training_states(backend, args, source.streamed) else None
    valid_states = cached_states(backend, valid_set, args, adapter_dir, share=1 / 8)
    if train_states is not None and warm_states:
        taken = sum(train_states.adopt(states) for states in warm_states)
        if taken:
            log(f"encoder states: those of {taken} utterances come from the passes before training, "
                f"{len(set(train_states.source)) - taken} to compute")
    for states in warm_states:  # what was not taken is not needed
        states.close()
    metrics_path = adapter_dir / METRICS_FILE
    summary = {"status": "done", "start_step": start, "steps": start}

    def record(entry: dict) -> None:
        if not world.is_main:
            return
        if on_metrics is not None:
            on_metrics(entry)
        try:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as e:  # a full disk loses a metrics line, not the run
            log(f"warning: could not append to {metrics_path}: {e.strerror or e}")

    def save(step: int, final: bool) -> bool:
        if not world.is_main:
            return True
        try:
            save_checkpoint(backend, adapter_dir, step, keep_step_copy=not final)
            return True
        except OSError as e:
            before = "the previous checkpoint is intact" if (adapter_dir / ADAPTER_FILE).exists() else \
                "no checkpoint is there yet"
            log(f"warning: could not write the checkpoint of step {step} to {adapter_dir}: {e.strerror or e}; "
                f"{before}" + ("" if final else "; training goes on and saves again later"))
            record({"step": step, "event": "checkpoint_failed", "error": str(e)})
            return False

    best = BestCheckpoint() if valid_set is not None and len(valid_set) else None
    warned = [False]

    def validate(step: int, say: Callable) -> bool:
        """Score the validation set; False when training should stop early."""
        tic = time.perf_counter()
        val = evaluate_loss(backend, valid_set, args.batch_size, args.val_batches, valid_states)
        wer = valid_wer(valid_states) if valid_wer is not None else None
        backend.set_training(True)
        entry = {"step": step, "val_loss": round(val, 5)}
        if wer is not None:
            entry["val_wer"] = round(wer, 3)
        record(dict(entry, val_seconds=round(time.perf_counter() - tic, 2)))
        say(f"step {step}: val loss {val:.3f}" + (f", val WER {wer:.2f}%" if wer is not None else ""))
        summary["val_loss"] = val
        train_loss = summary.get("train_loss")
        if train_loss and val > MEMORIZING_RATIO * train_loss and val - train_loss > 0.1 and not warned[0]:
            warned[0] = True
            say(f"warning: training loss {train_loss:.3f} is far below validation loss {val:.3f}: the adapters are "
                "learning the training rows by heart rather than the speech. More data, fewer --iters or a lower "
                "--learning-rate generalize better" + ("; the best validation's adapters are kept"
                                                       if args.best_checkpoint else ""))
        if best is None or not math.isfinite(val):
            return True
        if best.offer(backend, step, wer, val):
            return True
        if args.early_stop and best.stale >= args.early_stop:
            say(f"early stop at step {step}: no better validation in the last {best.stale} (the best: "
                f"{best.describe()}; --early-stop 0 trains on)")
            summary["early_stopped"] = step
            return False
        return True

    window = {"loss": 0.0, "tokens": 0.0, "seconds": 0.0, "audio": 0.0, "steps": 0}
    step = start
    lost: Optional[PeerLost] = None
    bar = None
    with StopFlag(log) as stop:
        try:
            fill_bar = (lambda it: _progress_bar(it, "encoder states", "batch")) if progress else None
            for states in (train_states, valid_states):
                if states is not None and not stop.requested:
                    states.fill(fill_bar, world)
            source.skip(start * args.grad_accumulation_steps)
            log(f"training on {source.describe()}")
            bar = _progress_bar(None, "train", "step", total=args.iters, initial=start) if progress else None
            say = bar.write if bar is not None else log
            backend.set_training(True)
            if stop.requested:
                summary["status"] = "interrupted"
            elif best is not None and start == 0 and valid_wer is not None:
                validate(0, say)  # the base model: the candidate every later checkpoint must beat
            while step < args.iters and not stop.requested:
                tic = time.perf_counter()
                lr = learning_rate_at(step, args.learning_rate, args.iters, args.lr_schedule, args.warmup)
                loss_sum = tok_sum = audio_seconds = 0.0
                step_ids: List[str] = []
                for k in range(args.grad_accumulation_steps):
                    examples, mine = source.batch(step * args.grad_accumulation_steps + k)  # this process's share
                    mine_tokens = float(sum(examples.labels[i].target_count for i in mine))
                    # each process's gradient is weighted by its tokens over the micro-batch's tokens on all processes
                    batch_tokens = float(world.sum([mine_tokens])[0]) if world.parallel else mine_tokens
                    if not mine_tokens:
                        continue
                    labels = collate([examples.labels[i] for i in mine], pad_token=0)
                    step_ids += [examples.utterances[i].id for i in mine]
                    batch_loss, tokens = backend.accumulate_gradients(
                        examples, mine, batch_states(train_states, mine), labels,
                        mine_tokens / (batch_tokens * args.grad_accumulation_steps), augmenter)
                    loss_sum += batch_loss
                    tok_sum += tokens
                    audio_seconds += examples.seconds(mine)
                if world.parallel:  # the step's figures over all processes, and a stop asked of any
                    loss_sum, tok_sum, audio_seconds, stops = (float(v) for v in world.sum(
                        [loss_sum, tok_sum, audio_seconds, float(stop.requested)]))
                    stop.requested = stops > 0
                if tok_sum == 0:
                    raise RuntimeError("no readable audio in this batch")
                if not math.isfinite(loss_sum):  # before the update: the weights and the checkpoints stay good
                    raise UserError(f"the loss of step {step + 1} is not a number (batch: {', '.join(step_ids[:8])}); "
                                    f"training stopped, the last checkpoint in {adapter_dir} is intact. Check those "
                                    "utterances, or lower --learning-rate")
                try:
                    backend.update(lr, args.max_grad_norm)
                except RuntimeError as e:
                    if not world.parallel:
                        raise
                    raise peer_lost(e) from None
                step += 1
                for key, value in (("loss", loss_sum), ("tokens", tok_sum), ("audio", audio_seconds),
                                   ("seconds", time.perf_counter() - tic), ("steps", 1)):
                    window[key] += value
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / max(tok_sum, 1):.3f}", lr=f"{lr:.2e}")
                if step % args.steps_per_report == 0 or step == args.iters:
                    entry, line = report_entry(step, window, lr, backend.peak_memory_gb())
                    record(entry)
                    say(line)
                    summary["train_loss"] = entry["train_loss"]
                    window = {k: 0.0 for k in window}
                if valid_set is not None and len(valid_set) and validates_at(step, start, args):
                    if not validate(step, say):
                        break
                if args.save_every and step % args.save_every == 0 and step < args.iters:
                    save(step, final=False)
                if stop.requested:
                    summary["status"] = "interrupted"
                    break
        except KeyboardInterrupt:
            summary["status"] = "interrupted"
        except PeerLost as e:  # the weights are those of the last whole step, the same in every process
            summary["status"], lost = "peer_lost", e
        finally:
            if bar is not None:
                bar.close()
            for states in (train_states, valid_states):
                if states is not None:
                    states.close()
    backend.set_training(False)
    summary["steps"] = step
    if best is not None and best.step is not None and args.best_checkpoint and best.step != step \
            and summary["status"] == "done" and lost is None:
        summary["saved"] = save(step, final=False)  # the last step's adapters and optimizer, as NNNNNNN_adapters...
        backend.load_adapter_weights(best.weights, f"the weights of step {best.step}")
        if world.is_main and summary["saved"]:
            try:
                write_adapter_tensors(adapter_dir / ADAPTER_FILE, best.weights, best.step)
            except OSError as e:
                summary["saved"] = False
                log(f"warning: could not write the best checkpoint to {adapter_dir}: {e.strerror or e}")
        log(f"kept the adapters of the best validation, {best.describe()}, in {adapter_dir / ADAPTER_FILE} "
            f"(the last step's are in {step:07d}_{ADAPTER_FILE}; --no-best-checkpoint keeps the last)")
    else:
        summary["saved"] = save(step, final=True)
    if best is not None and best.base_wer is not None and best.wer is not None and best.wer >= best.base_wer:
        log(f"warning: no training step transcribed the validation data better than the base model (WER "
            f"{best.base_wer:.2f}%)" + (": the adapters saved change nothing" if best.step == 0 and
                                         args.best_checkpoint else "") +
            ". More or cleaner data, a lower --learning-rate or fewer --iters may help")
    if best is not None and best.step is not None:
        summary["best"] = {"step": best.step, "val_wer": best.wer, "val_loss": best.loss,
                           "kept": bool(args.best_checkpoint) and summary["status"] == "done" and lost is None,
                           "described": best.describe()}
    if lost is not None:
        kept = f"the adapters of step {step} are saved in {adapter_dir}" if world.is_main and summary["saved"] else \
            f"the last checkpoint in {adapter_dir} is intact"
        raise PeerLost(f"{lost.cause}; this process stops too, and {kept}. Resume with --resume-adapter-file "
                       f"{adapter_dir / ADAPTER_FILE} (with any number of processes)")
    if summary["status"] == "interrupted":
        log(f"interrupted at step {step}; adapters saved in {adapter_dir}. Resume with "
            f"--resume-adapter-file {adapter_dir / ADAPTER_FILE}")
    summary["skipped_audio"] = source.failures()
    if valid_set is not None:
        summary["skipped_audio"].update({valid_set.utterances[i].id: why for i, why in valid_set.failed.items()})
    for name, why in list(summary["skipped_audio"].items())[:50]:
        log(f"skipped during training: {name}: {why}")
    return summary


def _progress_bar(iterable, desc: str, unit: str, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, **kwargs)
