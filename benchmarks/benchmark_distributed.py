"""Data-parallel scaling: steps per second of the same training with 1 and K processes, through the
launchers users run (mlx.launch for the MLX back end, torchrun for the torch one), printed with the
K-process/1-process ratio. Every run trains the same global batch, so the ideal ratio is K.

    python benchmarks/benchmark_distributed.py                      # tiny.en, both back ends, 1 vs 2 processes
    python benchmarks/benchmark_distributed.py --model base --processes 1 2 4 --engines torch --device cuda

Threads: each process gets cores/K threads (OMP_NUM_THREADS), so K processes share the machine
instead of oversubscribing it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def command(engine: str, processes: int) -> list:
    if processes == 1:
        return [sys.executable, "-m", "mlx_whisper_lora.lora", "--backend", engine]
    if engine == "mlx":
        return [str(BIN / "mlx.launch"), "-n", str(processes), "--backend", "ring", "--", str(BIN / "mlx-whisper-lora")]
    return [str(BIN / "torchrun"), "--nproc-per-node", str(processes), "-m", "mlx_whisper_lora.lora"]


def one_run(engine: str, processes: int, args, data: Path, folder: Path) -> dict:
    adapters = folder / f"{engine}_{processes}"
    extra = ["--device", args.device] if args.device and engine == "torch" else []
    cmd = command(engine, processes) + [
        "--model", args.model, "--train", "--data", str(data), "--adapter-path", str(adapters),
        "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--steps-per-report", str(args.iters),
        "--alignment-heads", "keep", "--no-progress", "--seed", "0", *extra, *args.extra]
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MLX_WHISPER_LORA_CACHE=str(folder / "cache"))
    tic = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    entries = [json.loads(line) for line in (adapters / "metrics.jsonl").read_text().splitlines()]
    step = next(e for e in entries if "iterations_per_second" in e)
    return {"engine": engine, "processes": processes, "steps_per_second": step["iterations_per_second"],
            "audio_seconds_per_second": step["audio_seconds_per_second"], "peak_gb_per_process": step["peak_memory_gb"],
            "wall_seconds": round(wall, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--data", type=Path, default=None,
                   help="a training folder (default: LibriSpeech clips of ../shared/data, 144 utterances)")
    p.add_argument("--engines", nargs="+", default=["mlx", "torch"], choices=["mlx", "torch"])
    p.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more lora flags, e.g. --train-encoder")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = args.data
        if data is None:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune_demo.py"), "--manifests-only", "--out",
                            str(folder / "ls")], check=True, capture_output=True)
            data = folder / "ls" / "data"
        rows = [one_run(engine, k, args, data, folder) for engine in args.engines for k in args.processes]
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {load:.2f} (1 min, at the end), "
          f"{args.model}, global batch {args.batch_size}, {args.iters} steps {' '.join(args.extra)}")
    print("| back end | processes | steps/s | audio s/s | ratio to 1 process | peak GB per process | wall s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["engine"] == row["engine"] and r["processes"] == min(args.processes))
        ratio = row["steps_per_second"] / base["steps_per_second"]
        print(f"| {row['engine']} | {row['processes']} | {row['steps_per_second']:.3f} | "
              f"{row['audio_seconds_per_second']:.1f} | {ratio:.2f}x | {row['peak_gb_per_process']:.2f} | "
              f"{row['wall_seconds']} |")


if __name__ == "__main__":
    main()
