"""Does training on long recordings cut by `prepare` match training on the same speech pre-cut? The Yoruba half of
issue 35's acceptance, on ../shared/data/yoruba_ogunlao: each training session's utterances joined in order
(0.4 s apart) into one recording with the session's text as one plain transcript, prepared with `prepare`'s
defaults; then two adapters trained with `lora`'s defaults and the same steps, one on the prepared windows and
one on the original utterances, both scored clip by clip on the test sessions' utterances with `lora --test`.

    python benchmarks/compare_prepared.py --work /tmp/yo_compare [--iters 200] [--sessions N]

Writes WORK/recordings (the joined sessions), WORK/prepared (prepare's output), WORK/precut and WORK/prepared_run
(the adapters and their --test reports) and prints both per-clip WERs. Each stage is skipped when its output is
there (delete it to run it again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_whisper_lora  # noqa: E402,F401  (fast BLAS before mlx)

DATA = ROOT.parent / "shared" / "data" / "yoruba_ogunlao"
GAP = 0.4


def sessions(data: Path, split: str) -> dict:
    """{session: its utterances in recorded order} for one split of the manifest."""
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    out: dict = {}
    for r in sorted(rows, key=lambda r: (r["session"], int(r["id"].rsplit("-", 1)[1]))):
        if r["split"] == split:
            out.setdefault(r["session"], []).append(r)
    return out


def join_sessions(data: Path, folder: Path, chosen: dict) -> None:
    """Each session as FOLDER/SESSION.wav with FOLDER/SESSION.txt (its utterances' text, in order) beside it."""
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in chosen.items():
        if (folder / f"{name}.txt").exists():
            continue
        pieces = []
        for r in rows:
            pieces += [load_audio(data / r["audio"]), np.zeros(int(GAP * 16000), np.float32)]
        sf.write(str(folder / f"{name}.wav"), np.concatenate(pieces), 16000)
        (folder / f"{name}.txt").write_text(" ".join(r["text"] for r in rows) + "\n")


def run(cmd: list, log: Path) -> float:
    """Run one CLI, its output to `log`; seconds it took."""
    tic = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - tic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/yo_compare"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default="base")
    p.add_argument("--language", default="yo")
    p.add_argument("--iters", type=int, default=200, help="the same steps for both adapters (lora's default)")
    p.add_argument("--sessions", type=int, default=0, help="only the first N training sessions (0: all)")
    p.add_argument("--prepare-only", action="store_true")
    args = p.parse_args()
    if not (args.data / "manifest.jsonl").exists():
        print(f"{args.data} has no manifest.jsonl (needs ../shared/data)", file=sys.stderr)
        return 2
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    train = sessions(args.data, "train")
    chosen = dict(list(train.items())[: args.sessions or None])
    join_sessions(args.data, work / "recordings", chosen)
    prepared = work / "prepared"
    if not (prepared / "train.jsonl").exists():
        seconds = run([py, "-m", "mlx_whisper_lora.prepare", str(work / "recordings"), "--output", str(prepared),
                       "--model", args.model, "--language", args.language, "--valid-fraction", "0",
                       "--test-fraction", "0"], work / "prepare.log")
        print(f"prepared {len(chosen)} sessions in {seconds / 60:.1f} min", file=sys.stderr)
    report = json.loads((prepared / "prepare_report.json").read_text())
    print(f"prepare kept {report['words_kept']} of {report['words_in']} words, "
          f"{report['seconds_kept'] / 60:.1f} of {report['seconds_in'] / 60:.1f} min")
    if args.prepare_only:
        return 0
    # the original utterances of the same sessions, and the test sessions' utterances for both runs
    precut = work / "precut_data"
    precut.mkdir(exist_ok=True)
    rows = [dict(r, audio=str((args.data / r["audio"]).resolve())) for s in chosen.values() for r in s]
    (precut / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = [dict(r, audio=str((args.data / r["audio"]).resolve())) for s in sessions(args.data, "test").values()
            for r in s]
    for folder in (precut, prepared):
        (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    scores = {}
    for name, data in (("precut", precut), ("prepared_run", prepared)):
        adapters = work / name
        common = ["--model", args.model, "--data", str(data), "--language", args.language,
                  "--adapter-path", str(adapters), "--no-progress"]
        if not (adapters / "adapters.safetensors").exists():
            seconds = run([py, "-m", "mlx_whisper_lora.lora", "--train", "--iters", str(args.iters), *common],
                          work / f"{name}_train.log")
            print(f"{name}: trained in {seconds / 60:.1f} min", file=sys.stderr)
        report = adapters / "test_results.json"
        if not report.exists():
            run([py, "-m", "mlx_whisper_lora.lora", "--test", *common], work / f"{name}_test.log")
        scores[name] = json.loads(report.read_text())
    print(f"{'trained on':14}{'WER norm.':>10}{'WER raw':>10}{'CER norm.':>10}   (per clip, test sessions)")
    for name, r in scores.items():
        print(f"{name:14}{r['normalized_wer']:>10.2f}{r['wer']:>10.2f}{r['normalized_cer']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
