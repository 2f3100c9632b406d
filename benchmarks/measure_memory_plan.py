"""The memory plan's estimate (tuner/memory_plan.py) against the measured peak of real training runs.

    python benchmarks/measure_memory_plan.py [--dims model,small] [--backends torch,mlx]
        [--configs decoder,encdec] [--batch-sizes 1,8] [--json out.json]

Each run is `lora --train` for `--iters` steps in a subprocess of its own (so each peak is its own), on
benchmark_train.py's inputs (demo clips joined in pairs: 30 s log-mels, labels of ~25 tokens), tiny.en's
weights or random weights of `--dims`, r=32 on query and value (`decoder`: the encoder frozen and its states
cached; `encdec`: encoder LoRA too). Measured: the process's peak RSS (what the plan compares with the
machine's memory on a CPU) and, for MLX, `mx.get_peak_memory()` (MLX's buffers alone). The estimate is the one
the run printed itself (its `memory plan:` line), so the figures are of the code that runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def reset_peaks(backend: str) -> None:
    """Linux: the process's peak RSS (VmHWM) set back to its RSS now (`clear_refs` 5); MLX's peak counter too."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if backend == "mlx":
        import mlx.core as mx

        mx.reset_peak_memory()


def current_mlx_peak(backend: str) -> float:
    if backend != "mlx":
        return 0.0
    import mlx.core as mx

    return mx.get_peak_memory() / (1 << 30)


def rss_gb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 30)


def hiwater_gb() -> float:
    """VmHWM of /proc/self/status in GB (2**30 bytes, as the loop reports RSS)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / (1 << 20)
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(spec: dict) -> None:
    sys.path.insert(0, str(ROOT))
    import resource

    import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
    from mlx_whisper_lora.recipes.run import run
    from mlx_whisper_lora.tuner.run_config import build_parser, merge_options

    argv = ["--train", "--model", spec["model"], "--data", spec["data"], "--adapter-path", spec["out"],
            "--iters", str(spec["iters"]), "--batch-size", str(spec["batch_size"]), "--lora-modules", "query", "value",
            "--steps-per-report", "1", "--save-every", "0", "--no-progress", "--timestamp-fraction", "0",
            "--pack-fraction", "0", "--valid-fraction", "0", "--no-best-checkpoint", "--alignment-heads", "keep",
            "--backend", spec["backend"], "--dtype", spec["dtype"]]
    argv += ["--freeze-encoder"] if spec["config"] == "decoder" else ["--train-encoder"]
    if spec["grad_checkpoint"]:
        argv += ["--grad-checkpoint"]
    cli = vars(build_parser("lora", "").parse_args(argv))
    cli.pop("config", None)
    from mlx_whisper_lora.recipes import run as recipe

    original = recipe.train
    mlx_peak = {}

    def train(*a, **k):  # the peaks of training alone: loading the model and reading the data are behind
        mlx_peak["rss_at_start_gb"] = rss_gb()
        if spec["backend"] == "mlx":
            import mlx.core as mx

            mlx_peak["mlx_active_at_start_gb"] = mx.get_active_memory() / (1 << 30)
        reset_peaks(spec["backend"])
        summary = original(*a, **k)
        mlx_peak["gb"] = current_mlx_peak(spec["backend"])
        return summary

    recipe.train = train
    result = run(merge_options(cli, None), lambda m: print(m, file=sys.stderr, flush=True))["train"]
    out = {"process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20),
           "peak_rss_gb": hiwater_gb(), "plan": result.get("memory_plan"),
           "rss_at_start_gb": mlx_peak["rss_at_start_gb"],
           "mlx_active_at_start_gb": mlx_peak.get("mlx_active_at_start_gb")}
    if spec["backend"] == "mlx":
        out["mlx_peak_gb"] = mlx_peak["gb"]
    print("RESULT " + json.dumps(out), flush=True)


def random_model(folder: Path, dims: dict) -> Path:
    """A model folder of these dims with random weights (seed 0), written once."""
    if not (folder / "config.json").exists():
        sys.path.insert(0, str(ROOT))
        import mlx.core as mx

        import mlx_whisper_lora  # noqa: F401
        from mlx_whisper_lora.backend_mlx.load import save_model
        from mlx_whisper_lora.backend_mlx.model import ModelDimensions, Whisper

        mx.random.seed(0)
        model = Whisper(ModelDimensions(**dims))
        mx.eval(model.parameters())
        save_model(model, folder)
    return folder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="model,small", help="model (tiny.en's weights) and/or small, medium, large-v2")
    p.add_argument("--backends", default="torch,mlx")
    p.add_argument("--configs", default="decoder,encdec")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--skip", default="", help="dims:backend:config:batch entries to leave out (comma-separated), "
                                                "e.g. small:mlx:encdec:8 where it would not fit this machine")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mwl_memory_plan")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    import benchmark_train as bt

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    if not (data / "train.jsonl").exists():
        bt.make_inputs(data, 8)
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    for dims in args.dims.split(","):
        model = "tiny.en" if dims == "model" else str(random_model(args.work / f"model_{dims}", bt.RANDOM_DIMS[dims]))
        for backend in args.backends.split(","):
            for config in args.configs.split(","):
                for batch in args.batch_sizes.split(","):
                    if f"{dims}:{backend}:{config}:{batch}" in skip:
                        continue
                    spec = {"model": model, "data": str(data), "backend": backend,
                            "config": config, "batch_size": int(batch), "iters": args.iters, "dtype": args.dtype,
                            "grad_checkpoint": args.grad_checkpoint,
                            "out": str(args.work / f"run_{dims}_{backend}_{config}_{batch}_{os.getpid()}")}
                    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                          text=True)
                    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                    if proc.returncode or not found:
                        print(f"{dims} {backend} {config} batch {batch}: failed\n{proc.stderr[-3000:]}", flush=True)
                        continue
                    r = json.loads(found[-1][7:])
                    plan = r["plan"] or {}
                    row = {"dims": dims, "backend": backend, "config": config, "batch_size": int(batch),
                           "estimate_gb": plan.get("estimate_gb"), "terms_gb": plan.get("terms_gb"),
                           "peak_rss_gb": round(r["peak_rss_gb"], 3),
                           "process_peak_rss_gb": round(r["process_peak_rss_gb"], 3),
                           "rss_at_start_gb": round(r["rss_at_start_gb"], 3),
                           "mlx_active_at_start_gb": r["mlx_active_at_start_gb"] and
                           round(r["mlx_active_at_start_gb"], 3),
                           "mlx_peak_gb": round(r["mlx_peak_gb"], 3) if "mlx_peak_gb" in r else None}
                    if row["estimate_gb"]:
                        row["error_pct"] = round(100 * (row["estimate_gb"] / row["peak_rss_gb"] - 1), 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| dims | engine | config | batch | estimate GB | peak RSS GB | MLX peak GB | estimate vs peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "tiny.en" if r["dims"] == "model" else f"{r['dims']} (random)"
        mlx_peak = f"{r['mlx_peak_gb']:.2f}" if r["mlx_peak_gb"] is not None else "-"
        est = f"{r['estimate_gb']:.2f}" if r["estimate_gb"] else "-"
        err = f"{r['error_pct']:+.1f}%" if r.get("error_pct") is not None else "-"
        print(f"| {name} | {r['backend']} | {r['config']} | {r['batch_size']} | {est} | {r['peak_rss_gb']:.2f} | "
              f"{mlx_peak} | {err} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
