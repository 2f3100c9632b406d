"""Each of the MLX engine's training-step optimizations alone: the loss and gradients of one batch through
`backend_mlx.engine.loss_fn`, with each path switched by its own argument, timed in one process.

    python benchmarks/benchmark_mlx_step.py [--model tiny.en | --dims small] [--batch-size 8] [--rank 32]
        [--tokens 28] [--steps 6]

Frozen encoder (encoder states given, as the loop's cache serves them; adapters on the query and value
of every attention): logits at every position against only at the target positions through the frozen
projection's loss (`positions`), the cross-attention's keys and values recomputed against cached
(`cross_kv`, computed once before timing as the cache holds them), and both; both with MLX ops only (no numpy
kernels: a GPU's path) eager and compiled (training/compiled_step.py, the labels bucketed). Encoder and decoder (log-mels
in): the encoder's self-attention as plain softmax products against blockwise (chunked_attention.py), the plain step compiled, and the plain step in passes of ENCODER_ROWS_PER_PASS rows
(as the engine runs a training encoder's batch). Prints
the median seconds per step and MLX's peak memory (mx.get_peak_memory) of each, and the ratio to the plain
path. Random tokens and log-mels: the arithmetic does not depend on the values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_whisper_lora  # noqa: E402,F401  (fast BLAS before mlx)


def main(argv=None):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_map

    from mlx_whisper_lora.backend_mlx.adapters import apply_adapters
    from mlx_whisper_lora.backend_mlx.engine import (ENCODER_ROWS_PER_PASS, loss_fn, set_blockwise_attention,
                                                     target_positions)
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.backend_mlx.model import Whisper
    from mlx_whisper_lora.backend_mlx.training.compiled_step import CompiledStep
    from mlx_whisper_lora.backend_mlx.training.host_kernels import mlx_ops_only
    from mlx_whisper_lora.formats.adapter_config import AdapterConfig
    from mlx_whisper_lora.formats.dims import ModelDimensions

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from benchmark_train import RANDOM_DIMS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--dims", choices=["model", *RANDOM_DIMS], default="model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--tokens", type=int, default=28, help="label length (the benchmark batch's ~25 tokens)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--configs", default="decoder,encdec")
    args = p.parse_args(argv)

    def model_for(freeze_encoder: bool):
        mx.random.seed(0)
        model = Whisper(ModelDimensions(**RANDOM_DIMS[args.dims])) if args.dims != "model" else load_model(args.model)
        apply_adapters(model, AdapterConfig(rank=args.rank, alpha=2 * args.rank, modules=["query", "value"],
                                            freeze_encoder=freeze_encoder))
        return model

    rng = np.random.default_rng(0)
    b, n = args.batch_size, args.tokens
    tokens = mx.array(rng.integers(0, 50000, (b, n + 1)).astype(np.int32))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = np.zeros((b, n), dtype=np.float32)
    for i in range(b):
        mask[i, 3: n - rng.integers(0, n // 3)] = 1  # a prefix not counted, ragged ends (padding)
    positions = target_positions(mask)

    def stepper(model, audio, states, mlx_only=False, compiled=False, blockwise=None, rows_per_pass=0, **paths):
        """A function running one step of this path: (loss, gradients), evaluated."""
        if compiled:  # the compiled step (training/compiled_step.py): MLX ops only, the labels bucketed
            compiled_step = CompiledStep(model, optim.AdamW(learning_rate=0.0), lambda m, a, i, t, kv, pos, w: loss_fn(
                m, a, i, t, None, states, cross_kv=kv, positions=pos, weights=w), model.dims.n_text_ctx)
            labels = (np.array(inputs), np.array(targets), mask)

            def step(model):
                (loss, _), grads = compiled_step.loss_and_grad(audio, labels, paths.get("cross_kv"))
                return loss, grads
        elif rows_per_pass:  # as MLXBackend.accumulate_gradients with ENCODER_ROWS_PER_PASS: passes of rows
            grad_of = nn.value_and_grad(model, lambda m, a, i, t, pos: loss_fn(m, a, i, t, None, states,
                                                                               positions=pos)[0])

            def step(model):
                loss, grads, total = 0.0, None, float(mask.sum())
                for s in range(0, b, rows_per_pass):
                    part = slice(s, s + rows_per_pass)
                    share = float(mask[part].sum()) / total
                    part_loss, part_grads = grad_of(model, audio[part], inputs[part], targets[part],
                                                    target_positions(mask[part]))
                    part_grads = tree_map(lambda g: g * share, part_grads)
                    grads = part_grads if grads is None else tree_map(lambda x, y: x + y, grads, part_grads)
                    loss = loss + part_loss * share
                    mx.eval(loss, grads)
                return loss, grads
        else:
            step = nn.value_and_grad(model, lambda m: loss_fn(m, audio, inputs, targets, mx.array(mask), states,
                                                              **paths)[0])

        def run():
            if blockwise is not None:
                set_blockwise_attention(model, blockwise)
            with mlx_ops_only() if mlx_only else contextlib.nullcontext():
                loss, grads = step(model)
                mx.eval(loss, grads)
            return loss.item()
        return run

    def timed(config, runs):
        """The paths' steps in turn, round after round (a shared CPU's load falls on all alike): the median
        seconds of each after its first, its largest MLX peak, its loss."""
        times, peaks, losses = ({name: [] for name in runs} for _ in range(3))
        for i in range(args.steps + 1):
            for name, run in runs.items():
                mx.clear_cache()
                mx.reset_peak_memory()
                tic = time.perf_counter()
                losses[name].append(run())
                times[name].append(time.perf_counter() - tic)
                peaks[name].append(mx.get_peak_memory() / 1e9)
        return [(config, name, statistics.median(times[name][1:]), max(peaks[name]), losses[name][-1])
                for name in runs]

    rows = []
    if "decoder" in args.configs:
        model = model_for(True)
        n_frames = model.dims.n_audio_ctx * 2
        states = model.embed_audio(mx.array(rng.normal(0, 1, (b, n_frames, model.dims.n_mels)).astype(np.float32)))
        kv = model.decoder.base_cross_kv(states)
        mx.eval(states, kv)
        paths = {"plain": {}, "target positions": {"positions": positions}, "cached cross K/V": {"cross_kv": kv},
                 "both": {"positions": positions, "cross_kv": kv},
                 "both, MLX ops only (a GPU's path), eager": {"positions": positions, "cross_kv": kv, "mlx_only": True},
                 "both, MLX ops only, compiled": {"cross_kv": kv, "compiled": True}}
        rows += timed("decoder", {name: stepper(model, states, True, **p) for name, p in paths.items()})
    if "encdec" in args.configs:
        model = model_for(False)
        mels = mx.array(rng.normal(0, 1, (b, model.dims.n_audio_ctx * 2, model.dims.n_mels)).astype(np.float32))
        paths = {"plain": {"blockwise": False}, "blockwise attention": {"blockwise": True},
                 "plain, compiled": {"blockwise": False, "compiled": True},
                 f"passes of {ENCODER_ROWS_PER_PASS} rows": {"blockwise": False, "rows_per_pass": ENCODER_ROWS_PER_PASS}}
        rows += timed("encdec", {name: stepper(model, mels, False, positions=positions, **p)
                                 for name, p in paths.items()})
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {load:.2f}, MLX {mx.__version__} on "
          f"{'gpu' if mx.default_device() == mx.gpu else 'cpu'}, {args.model if args.dims == 'model' else args.dims}, "
          f"batch {b}, {n} tokens, r={args.rank} q+v")
    print("| config | path | s/step | ratio | peak memory | loss |")
    print("|---|---|---|---|---|---|")
    base = {}
    for config, name, seconds, peak, loss in rows:
        base.setdefault(config, seconds)
        print(f"| {config} | {name} | {seconds:.3f} | {seconds / base[config]:.2f}x | {peak:.2f} GB | {loss:.4f} |")


if __name__ == "__main__":
    main()
