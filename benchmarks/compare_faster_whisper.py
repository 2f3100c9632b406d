"""Agreement with faster-whisper on the same weights, and WER against the references.

For each set in ../shared/data: greedy long-form transcription (beam 1, default temperature fallback)
by this package and by faster-whisper (float32) with the same CTranslate2 weights. Prints, per set,
the share of utterances whose texts are identical after Whisper's English normalizer (the basic one
for other languages), and both WERs (normalized) against the references.

Usage: python benchmarks/compare_faster_whisper.py [--model tiny.en] [--sets a,b] [--limit N] [--detect]
Needs faster-whisper, jiwer and openai-whisper (for its normalizers) installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
from mlx_whisper_lora.backend_mlx.load import load_model
from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
from mlx_whisper_lora.transcribe import transcribe

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ENGLISH_SETS = ["librispeech_2spk", "librispeech_test_clean_4", "whisper_mlx_classics", "pocketsphinx_librivox",
                "ljspeech_coqui_tests", "fleurs_en_de"]


def ct2_folder(name: str, tmp: Path) -> Path:
    """A folder faster-whisper can open: the package folder, or the parts joined into one file."""
    location = OFFLINE_MODELS[name].locate()
    if location is None:
        sys.exit(f"offline weights for {name} are not installed")
    if len(location.model_parts) == 1:
        return location.folder
    out = tmp / name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "model.bin", "wb") as f:
        for part in location.model_parts:
            f.write(part.read_bytes())
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (location.folder / extra).exists():
            shutil.copy(location.folder / extra, out / extra)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en", choices=sorted(OFFLINE_MODELS))
    p.add_argument("--sets", default=",".join(ENGLISH_SETS))
    p.add_argument("--language", default=None, help="keep only utterances of this language")
    p.add_argument("--detect", action="store_true", help="let both systems detect the language")
    p.add_argument("--limit", type=int, default=0, help="at most N utterances per set (0: all)")
    p.add_argument("--json", default=None, help="also write per-utterance results here")
    args = p.parse_args(argv)

    import jiwer
    from faster_whisper import WhisperModel
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    english, basic = EnglishTextNormalizer(), BasicTextNormalizer()
    ours_model = load_model(args.model)
    multilingual = ours_model.is_multilingual
    with tempfile.TemporaryDirectory() as tmp:
        fw = WhisperModel(str(ct2_folder(args.model, Path(tmp))), device="cpu", compute_type="float32", cpu_threads=2)
        rows = []
        print(f"model {args.model}, greedy, language {'English-only model' if not multilingual else ('detected' if args.detect else 'given')}")
        print(f"{'set':28s} {'utts':>5s} {'identical':>9s} {'WER ours':>9s} {'WER fw':>8s}")
        totals = {"n": 0, "same": 0, "refs": [], "ours": [], "fw": []}
        for name in args.sets.split(","):
            items = [json.loads(l) for l in open(DATA / name / "manifest.jsonl", encoding="utf-8") if l.strip()]
            if args.language:
                items = [i for i in items if i.get("language") == args.language]
            if args.limit:
                items = items[: args.limit]
            if not items:
                continue
            refs, ours_texts, fw_texts, same = [], [], [], 0
            for item in items:
                path = DATA / name / item["audio"]
                lang = item.get("language", "en")
                given = None if (args.detect and multilingual) else lang
                norm = english if lang == "en" else basic
                ours = transcribe(path, ours_model, progress=False, language=given)["text"]
                segments, info = fw.transcribe(str(path), beam_size=1, language=given)
                theirs = "".join(s.text for s in segments)
                a, b, r = norm(ours), norm(theirs), norm(item["text"])
                same += a == b
                refs.append(r), ours_texts.append(a), fw_texts.append(b)
                rows.append({"set": name, "id": item["id"], "ours": ours, "faster_whisper": theirs, "ref": item["text"]})
            wer_ours = jiwer.wer(refs, ours_texts) * 100
            wer_fw = jiwer.wer(refs, fw_texts) * 100
            print(f"{name:28s} {len(items):5d} {100 * same / len(items):8.1f}% {wer_ours:8.2f}% {wer_fw:7.2f}%", flush=True)
            totals["n"] += len(items)
            totals["same"] += same
            totals["refs"] += refs
            totals["ours"] += ours_texts
            totals["fw"] += fw_texts
        if totals["n"]:
            print(f"{'all':28s} {totals['n']:5d} {100 * totals['same'] / totals['n']:8.1f}% "
                  f"{jiwer.wer(totals['refs'], totals['ours']) * 100:8.2f}% {jiwer.wer(totals['refs'], totals['fw']) * 100:7.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
