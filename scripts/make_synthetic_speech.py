"""Generate a synthetic-voice speech set with espeak-ng: train/valid/test manifests + FLAC files.

    python scripts/make_synthetic_speech.py OUT_DIR [--train 320 --valid 24 --test 60] [--seed 0]
                                            [--text-file sentences.txt]

The text comes from a small random grammar (names, places, numbers, times, everyday words) mixed with
random runs of frequent English words (`--word-salad`, so that adapters learn the voice, not the
grammar), or from
`--text-file` (one sentence a line, for example your own domain's jargon); each split gets different
sentences. Voices vary in accent (en-us, en, en-gb-scotland, en-029, ...),
variant (male/female), rate and pitch. espeak-ng comes from the PyPI package `espeakng-loader`
(library and voice data, no system install), or from an `espeak-ng` program on PATH.

This is the "new voice" a LoRA adapter learns: Whisper tiny.en stumbles on robotic diphone speech.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

NAMES = ("Anna Brian Carlos Diana Edward Fatima George Hannah Ivan Julia Kenji Laura Marco Nadia Oscar Priya "
         "Quentin Rosa Samuel Tara Umar Vera Walter Xena Yusuf Zoe Martin Elena Peter Sofia").split()
PLACES = ("the station,the library,the harbor,the old bridge,the market,the museum,the airport,the bakery,"
          "the hospital,the park,the school,the river,the village,the hotel,the office,the garden,the stadium,"
          "the castle,the factory,the beach").split(",")
OBJECTS = ("a red umbrella,three letters,the blue notebook,a warm coat,two tickets,the spare keys,a heavy box,"
           "fresh bread,the weekly report,a small camera,an old map,the green bicycle,a cup of tea,the new laptop,"
           "some apples,a wooden chair,the final draft,a silver ring,the train schedule,a paper bag").split(",")
VERBS = ("brought,found,lost,carried,painted,ordered,borrowed,returned,forgot,repaired,sold,bought,opened,"
         "checked,cleaned,hid,packed,signed,wrapped,delivered").split(",")
ADJECTIVES = ("quiet,busy,cold,bright,crowded,empty,noisy,strange,beautiful,dark,warm,famous,narrow,modern,"
              "ancient,tiny,huge,peaceful,windy,dusty").split(",")
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
NUMBER_WORDS = ("two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty "
                "fifty sixty a hundred").split()
TIMES = "seven eight nine ten eleven noon".split()
WEATHER = "rain,snow,strong wind,fog,sunshine,a storm,light showers,clear skies".split(",")
VOICES = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3", "en+m3", "en-us+m5", "en+f2",
          "en-gb-x-gbclan", "en+f4", "en-us+m2")


def common_words(limit: int = 20000) -> list:
    """Real English words: those written at least twice in Python's own documentation (shipped with
    every Python as pydoc_data) that are also single whole-word tokens among the first `limit` BPE ranks."""
    import collections
    import re

    from pydoc_data.topics import topics

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.text.tokenizer import read_tiktoken_file

    counts = collections.Counter(re.findall(r"(?<![\w.])[a-z]{3,}(?![\w(])", " ".join(topics.values())))
    ranks = read_tiktoken_file(ASSETS / "gpt2.tiktoken")
    return sorted(w for w, n in counts.items() if n >= 2 and ranks.get(b" " + w.encode(), limit) < limit)


def word_salad(rng: np.random.Generator, words: list) -> str:
    """A random run of frequent words: no grammar to lean on, so a model must listen."""
    n = int(rng.integers(5, 12))
    text = " ".join(words[i] for i in rng.integers(len(words), size=n))
    return text[0].upper() + text[1:] + "."


def sentence(rng: np.random.Generator) -> str:
    c = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    templates = [
        lambda: f"{c(NAMES)} {c(VERBS)} {c(OBJECTS)} to {c(PLACES)} on {c(DAYS)}.",
        lambda: f"The {c(ADJECTIVES)} road to {c(PLACES)} was closed for {c(NUMBER_WORDS)} days.",
        lambda: f"Please meet {c(NAMES)} near {c(PLACES)} at {c(TIMES)} o'clock.",
        lambda: f"On the {c(['first', 'second', 'third', 'fifth', 'tenth', 'twentieth'])} of {c(MONTHS)}, "
                f"{c(NAMES)} {c(VERBS)} {c(OBJECTS)}.",
        lambda: f"We expect {c(WEATHER)} over {c(PLACES)} this {c(DAYS)} afternoon.",
        lambda: f"{c(NAMES)} asked {c(NAMES)} why {c(PLACES)} was so {c(ADJECTIVES)}.",
        lambda: f"There are {c(NUMBER_WORDS)} people waiting outside {c(PLACES)}.",
        lambda: f"Did you know that {c(NAMES)} {c(VERBS)} {c(OBJECTS)} last {c(MONTHS)}?",
        lambda: f"It was a {c(ADJECTIVES)} morning, and {c(PLACES)} looked {c(ADJECTIVES)}.",
        lambda: f"{c(NAMES)} said the {c(ADJECTIVES)} room costs {c(NUMBER_WORDS)} dollars a night.",
    ]
    return templates[rng.integers(len(templates))]()


class Espeak:
    """espeak-ng through its C library (espeakng-loader) or, failing that, the espeak-ng program."""

    def __init__(self):
        self.lib = None
        try:
            import espeakng_loader

            lib = ctypes.cdll.LoadLibrary(str(espeakng_loader.get_library_path()))
            data = str(espeakng_loader.get_data_path()).encode()
            rate = lib.espeak_Initialize(2, 0, ctypes.c_char_p(str(Path(data.decode()).parent).encode()), 0)
            if rate <= 0:  # some builds want the data folder itself
                rate = lib.espeak_Initialize(2, 0, ctypes.c_char_p(data), 0)
            if rate > 0:
                self.lib, self.rate = lib, rate
                self._chunks = []
                callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

                def on_audio(wav, n, events):
                    if n > 0:
                        self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
                    return 0

                self._callback = callback_type(on_audio)
                lib.espeak_SetSynthCallback(self._callback)
        except ImportError:
            pass
        if self.lib is None and shutil.which("espeak-ng") is None:
            sys.exit("espeak-ng not found: pip install espeakng-loader (or install the espeak-ng program)")

    def __call__(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        import soxr

        if self.lib is not None:
            self._chunks = []
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
            self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
            data = text.encode("utf-8") + b"\0"
            self.lib.espeak_Synth(ctypes.c_char_p(data), len(data), 0, 0, 0, 1, None, None)  # espeakCHARS_UTF8
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self._chunks).astype(np.float32) / 32768.0 if self._chunks else np.zeros(0, np.float32)
            sr = self.rate
        else:
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "s.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav), text], check=True)
                audio, sr = sf.read(wav, dtype="float32")
        return soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)


def make_split(espeak: Espeak, out: Path, name: str, count: int, rng: np.random.Generator, seen: set,
               texts=None, salad_fraction: float = 0.0, words=None) -> None:
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    while len(lines) < count:
        if texts is not None:
            if not texts:
                sys.exit(f"--text-file has too few distinct sentences for the {name} split")
            text = texts.pop()
        elif words and rng.random() < salad_fraction:
            text = word_salad(rng, words)
        else:
            text = sentence(rng)
        if text in seen:
            continue
        seen.add(text)
        voice = VOICES[rng.integers(len(VOICES))]
        rate, pitch = int(rng.integers(140, 200)), int(rng.integers(30, 70))
        audio = espeak(text, voice, rate, pitch)
        utt_id = f"{name}-{len(lines):04d}"
        sf.write(audio_dir / f"{utt_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
        lines.append({"id": utt_id, "audio": f"audio/{utt_id}.flac", "text": text, "language": "en",
                      "duration": round(len(audio) / SAMPLE_RATE, 3), "voice": voice, "rate": rate, "pitch": pitch})
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--valid", type=int, default=24)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-file", type=Path, default=None, help="sentences to speak, one a line (default: a grammar)")
    p.add_argument("--word-salad", type=float, default=0.5,
                   help="share of utterances that are random runs of frequent words instead of grammar sentences")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    texts = None
    if args.text_file:
        texts = list(dict.fromkeys(t.strip() for t in args.text_file.read_text(encoding="utf-8").splitlines() if t.strip()))
        rng.shuffle(texts)
    espeak = Espeak()
    words = common_words() if args.word_salad > 0 and texts is None else None
    seen: set = set()
    for name, count in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        make_split(espeak, args.out, name, count, rng, seen, texts, args.word_salad, words)
        print(f"{name}: {count} utterances", file=sys.stderr)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
