"""Peak memory of training on a 1,000-row and a 10,000-row dataset, with --streaming and without.

Each dataset is a `save_to_disk` folder whose rows repeat the bundled demo clips (as encoded bytes,
the way hub datasets hold audio). Every run trains the same number of steps (tiny.en, frozen
encoder, torch back end) in a child process whose resident memory is sampled every 0.2 s.

    python benchmarks/measure_streaming_memory.py [--rows 1000 10000] [--iters 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "mlx_whisper_lora" / "assets" / "demo_data"


def build(folder: Path, rows: int) -> Path:
    import datasets

    demo = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()]
    audio = [{"bytes": (DEMO / r["audio"]).read_bytes(), "path": None} for r in demo]

    def gen():
        for i in range(rows):
            yield {"audio": audio[i % len(demo)], "text": demo[i % len(demo)]["text"], "id": f"row{i}"}

    ds = datasets.Dataset.from_generator(gen).cast_column("audio", datasets.Audio(decode=False))
    out = folder / f"rows{rows}"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


def peak_rss(cmd: list) -> tuple:
    """(peak resident MB of the process and its children, seconds, samples over time)."""
    tic = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    handle = psutil.Process(proc.pid)
    peak, samples = 0, []
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [handle, *handle.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        samples.append((round(time.time() - tic, 1), round(rss / 2**20)))
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return peak / 2**20, time.time() - tic, samples


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--iters", type=int, default=40)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{'rows':>7} {'mode':>10} {'peak MB':>9} {'seconds':>8}  resident MB after 25/50/75/100% of the run")
        for rows in args.rows:
            data = build(tmp, rows)
            for mode in ("streaming", "in memory"):
                cmd = [sys.executable, "-m", "mlx_whisper_lora.lora", "--train", "--hf-dataset", str(data),
                       "--iters", str(args.iters), "--batch-size", "8", "--freeze-encoder", "--no-encoder-cache",
                       "--backend", "torch", "--model", "tiny.en", "--adapter-path", str(tmp / f"a{rows}{mode[0]}"),
                       "--no-progress", "--save-every", "0", "--alignment-heads", "keep"]
                if mode == "streaming":
                    cmd.append("--streaming")
                peak, seconds, samples = peak_rss(cmd)
                quarters = [samples[min(len(samples) - 1, int(len(samples) * q))][1] for q in (0.25, 0.5, 0.75, 1.0)] \
                    if samples else []
                print(f"{rows:>7} {mode:>10} {peak:>9.0f} {seconds:>8.1f}  {quarters}", flush=True)


if __name__ == "__main__":
    main()
