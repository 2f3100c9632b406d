"""The server: adapters on one base model (the bank), batches that mix adapters, the HTTP API against
the CLI's transcripts, errors that leave the server serving, and the memory an added adapter costs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mlx_whisper_lora  # noqa: F401  (before mlx: the fast BLAS)
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.backend_mlx.adapters import load_adapters
from mlx_whisper_lora.backend_mlx.load import load_model
from mlx_whisper_lora.formats.adapter_config import AdapterConfig
from mlx_whisper_lora.adapter_bank.bank import BASE, AdapterBank

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_process import make_adapter  # noqa: E402  (tests/server_process.py)

DEMO_ADAPTER = ASSETS / "demo_adapter"
CLIP = ASSETS / "demo.flac"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return {"demo": DEMO_ADAPTER,
            "dora": make_adapter(root / "dora", "dora", 4, 1, modules=["query", "value", "mlp1"], freeze_encoder=False)}


@pytest.mark.slow  # 24 s (suite under 15 min); the torch bank test and the worker test compare rows by default
def test_bank_rows_compute_what_each_adapter_loaded_alone_computes(adapters):
    mel = mx.array(np.random.default_rng(0).normal(0, 1, (3, 3000, 80)).astype(np.float32))
    tokens = mx.array([[50257, 50362, 440, 2068]] * 3)
    alone = {}
    for name in (BASE, "demo", "dora"):
        model = load_model("tiny.en")
        if name:
            load_adapters(model, adapters[name])
        alone[name] = np.array(model(mel, tokens))
    bank = AdapterBank(load_model("tiny.en"))
    for name, path in adapters.items():
        bank.add(name, path)
    for rows in [(BASE,), ("demo",), ("dora",), ("demo", BASE, "dora"), ("dora", "dora", "demo")]:
        bank.select(rows)
        got = np.array(bank.model(mel, tokens))
        expected = np.stack([alone[rows[i] if len(rows) == 3 else rows[0]][i] for i in range(3)])
        # the bank's row and the lone model are two float32 orders of the same logits (the adapter's products
        # for a gathered set of rows, DoRA's row scale applied apart): each within MLX's float32 rounding of the
        # float64 logits, which test_torch_backend.py::test_logits_match_mlx bounds for tiny.en (~1.2e-4 there,
        # by MLX_FACTOR x torch's own), so they sit within ~2.5e-4 of each other (measured 2.3e-5, DoRA rows;
        # 0.0 for LoRA rows). 1e-3 of the largest logit (~3e-2) keeps 100x above that and 100x below what an
        # adapter in the wrong row does (it moves logits by 2.3, DoRA, to 20, the demo adapter)
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), rows
    assert not np.allclose(alone["demo"], alone[BASE]) and not np.allclose(alone["dora"], alone[BASE])


def test_bank_refuses_what_it_cannot_serve(adapters, tmp_path):
    from mlx_whisper_lora.errors import UserError

    bank = AdapterBank(load_model("tiny.en"))
    bank.add("demo", adapters["demo"])
    with pytest.raises(UserError, match="already loaded"):
        bank.add("demo", adapters["demo"])
    with pytest.raises(UserError, match="no adapter named 'other'"):
        bank.select(["other"])
    full = AdapterConfig(fine_tune_type="full", base_model="tiny.en")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "adapter_config.json").write_text(json.dumps(full.to_json()))
    with pytest.raises(UserError, match="full fine-tune"):
        bank.add("full", tmp_path / "full")


def test_adding_adapters_costs_far_less_memory_than_a_base_model(adapters, tmp_path):
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    third = make_adapter(tmp_path / "third", "lora", 16, 2)  # (loads a model of its own: before measuring)
    bank = AdapterBank(load_model("tiny.en"))
    base_bytes = sum(v.nbytes for _, v in tree_flatten(bank.model.parameters()))
    bank.add("demo", adapters["demo"])
    bank.select(["demo"])
    bank.model.embed_audio(mx.zeros((1, 3000, 80)))
    before = process.memory_info().rss
    bank.add("dora", adapters["dora"])
    bank.add("third", third)
    for name in ("dora", "third"):
        bank.select([name])
        mx.eval(bank.model.embed_audio(mx.zeros((1, 3000, 80))))
    grown = process.memory_info().rss - before
    print(f"base model {base_bytes / 1e6:.1f} MB; adding two adapters grew RSS by {grown / 1e6:.1f} MB")
    assert grown < base_bytes


def test_worker_batches_requests_for_different_adapters_and_matches_one_at_a_time(adapters, shared_data):
    from mlx_whisper_lora.inference.transcriber import transcribe
    from mlx_whisper_lora.serving.worker import CallOptions, Worker

    clips = [str(CLIP), str(next((shared_data / "librispeech_2spk").rglob("*.flac")))]

    def load():
        bank = AdapterBank(load_model("tiny.en"))
        for name, path in adapters.items():
            bank.add(name, path)
        return bank

    worker = Worker(load, max_batch=8, gather_seconds=0.5).start()
    try:
        from mlx_whisper_lora.data.audio import load_audio

        audio = [load_audio(c) for c in clips]
        asked = [(0, BASE), (0, "demo"), (1, "dora"), (1, BASE), (0, "dora"), (1, "demo")]
        futures = [worker.submit(audio[i], name, CallOptions(language="en")) for i, name in asked]
        got = [f.result(timeout=300)["text"] for f in futures]
        assert any(len(set(batch)) > 1 for batch in worker.batches), worker.batches
        for (i, name), text in zip(asked, got):
            worker.bank.select([name])
            alone = transcribe(audio[i], worker.bank.model, language="en", verbose=False)["text"]
            assert text == alone, (clips[i], name)
        worker.bank.select([BASE])
    finally:
        worker.stop()


# ---------------------------------------------------------------- the HTTP server, as a user starts it
from server_process import cli_text, start_server  # noqa: E402  (tests/server_process.py)


@pytest.fixture(scope="module")
def server(adapters):
    proc, url = start_server("--adapter", f"demo={adapters['demo']}", "--adapter", f"dora={adapters['dora']}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_concurrent_requests_for_the_base_and_two_adapters_equal_the_cli(server, adapters, shared_data, tmp_path):
    import httpx

    clips = [CLIP, next((shared_data / "librispeech_2spk").rglob("*.flac"))]
    asked = [(c, m) for c in clips for m in ("tiny.en", "demo", "dora")]

    def post(item):
        clip, model = item
        with open(clip, "rb") as f:
            r = httpx.post(server + "/v1/audio/transcriptions", files={"file": (clip.name, f)},
                           data={"model": model}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["text"]

    with ThreadPoolExecutor(len(asked)) as pool:
        served = list(pool.map(post, asked))
    for (clip, model), text in zip(asked, served):
        expected = cli_text(clip, None if model == "tiny.en" else adapters[model], tmp_path / model)
        assert text == expected, (clip.name, model)
    assert served[0] != served[1]  # the demo adapter changes the demo clip's transcript
    listed = httpx.get(server + "/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny.en", "demo", "dora"]


def test_hotwords_reach_the_decoder_as_transcribe_gives_them(server, tmp_path):
    import httpx

    from mlx_whisper_lora.transcribe import main

    hotwords = "Whisper, LoRA adapters, speech synthesizer"
    with open(CLIP, "rb") as f:
        r = httpx.post(server + "/v1/audio/transcriptions", files={"file": (CLIP.name, f)},
                       data={"model": "tiny.en", "hotwords": hotwords}, timeout=300)
    assert r.status_code == 200, r.text
    main([str(CLIP), "--model", "tiny.en", "--hotwords", hotwords, "--output-dir", str(tmp_path), "--output-format",
          "json", "--verbose", "False"])
    assert r.json()["text"] == json.loads((tmp_path / f"{CLIP.stem}.json").read_text())["text"]
    assert r.json()["text"] != cli_text(CLIP, None, tmp_path / "plain")  # the words changed what was heard


def test_bad_uploads_get_json_errors_and_the_server_keeps_serving(server):
    import httpx

    post = lambda **kw: httpx.post(server + "/v1/audio/transcriptions", timeout=300, **kw)  # noqa: E731
    r = post(files={"file": ("notes.txt", b"this is not audio at all")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_audio", r.text
    r = post(files={"file": ("empty.wav", b"")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_file"
    with open(CLIP, "rb") as f:
        data = f.read()
    r = post(files={"file": ("demo.flac", data)}, data={"model": "nobody"})
    assert r.status_code == 404 and "tiny.en, demo, dora" in r.json()["error"]["message"]
    r = post(files={"file": ("demo.flac", data)}, data={"response_format": "yaml"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = post(files={"file": ("demo.flac", data)}, data={"response_format": "text", "model": "demo"})
    assert r.status_code == 200 and "adapted" in r.text
    r = post(files={"file": ("demo.flac", data)},
             data={"response_format": "verbose_json", "timestamp_granularities[]": "word"})
    body = r.json()
    assert body["duration"] == pytest.approx(8.1, abs=0.1) and body["words"][0]["start"] < body["words"][-1]["end"]
    assert body["language"] == "english"  # as OpenAI names it (not "en")
    assert body["segments"] and {"start", "end", "text", "avg_logprob"} <= set(body["segments"][0])
    r = post(files={"file": ("demo.flac", data)}, data={"response_format": "vtt"})
    assert r.text.startswith("WEBVTT")
    r = httpx.post(server + "/v1/audio/translations", files={"file": ("demo.flac", data)}, timeout=60)
    assert r.status_code == 400 and "English-only" in r.json()["error"]["message"]


def test_upload_limit_is_a_flag_and_a_taken_port_is_one_line(tmp_path):
    from mlx_whisper_lora.serve import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: cannot listen on")
    assert "Traceback" not in done.stderr
    with pytest.raises(SystemExit):
        main(["--adapter", "x=/no/such/folder"])

    import httpx
    import soundfile as sf

    proc, url = start_server("--max-upload-mb", "0.05", "--no-demo-adapter")
    try:
        r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("demo.flac", CLIP.read_bytes())}, timeout=60)
        assert r.status_code == 413 and "0.05 MB" in r.json()["error"]["message"], r.text
        sf.write(tmp_path / "quiet.wav", np.zeros(8000, np.float32), 16000)
        r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("quiet.wav", (tmp_path / "quiet.wav").read_bytes())},
                       timeout=120)
        assert r.status_code == 200, r.text
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny.en"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def all_logits(model, tokens: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """Logits at every position of `tokens` over `mel`, through the decoding interface either engine offers."""
    return model.decode_step(tokens, model.encode_audio(mel), None, positions=range(tokens.shape[1]))[0]


def test_torch_back_end_bank_matches_its_own_adapter_loading(adapters):
    pytest.importorskip("torch")
    from mlx_whisper_lora.transcribe import load_for_inference

    mel = np.random.default_rng(0).normal(0, 1, (2, 3000, 80)).astype(np.float32)
    tokens = np.array([[50257, 50362, 440, 2068]] * 2)

    def outputs(model):
        return all_logits(model, tokens, mel)

    alone = {name: outputs(load_for_inference("tiny.en", adapters.get(name), backend="torch", device="cpu"))
             for name in (BASE, "demo", "dora")}
    bank = AdapterBank(load_for_inference("tiny.en", None, backend="torch", device="cpu"), "torch")
    for name, path in adapters.items():
        bank.add(name, path)
    for rows in [("dora",), ("demo", "dora"), (BASE, "demo")]:
        bank.select(rows)
        got = outputs(bank.model)
        expected = np.stack([alone[rows[i] if len(rows) == 2 else rows[0]][i] for i in range(2)])
        # two float32 orders of the same torch logits: within twice torch's float32 rounding of the float64
        # logits (under MLX's ~1.2e-4, test_torch_backend.py::test_logits_match_mlx; measured 4.1e-5 apart, DoRA
        # rows); 1e-3 of the largest logit (~3e-2) is 100x above that and 100x below a wrong row (2.8 to 20)
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), rows


def test_first_command_prints_base_and_adapted_side_by_side(tmp_path, monkeypatch, capsys):
    from mlx_whisper_lora.errors import UserError
    from mlx_whisper_lora.transcribe import main, transcribe

    monkeypatch.chdir(tmp_path)
    main([])  # the README's first command
    out = capsys.readouterr().out
    base = transcribe(str(CLIP), "tiny.en", verbose=False)["text"]
    model = load_model("tiny.en")
    load_adapters(model, DEMO_ADAPTER)
    adapted = transcribe(str(CLIP), model, verbose=False)["text"]
    assert base != adapted
    header = out.splitlines()[1]
    assert header.startswith("base model") and "| with the adapter" in header
    left = " ".join(line.split(" | ")[0].strip() for line in out.splitlines()[3:] if " | " in line)
    right = " ".join(line.split(" | ")[1].strip() for line in out.splitlines()[3:] if " | " in line)
    assert left == " ".join(base.split()) and right == " ".join(adapted.split())
    assert " ".join((tmp_path / "demo.txt").read_text().split()) == " ".join(adapted.split())
    with pytest.raises(UserError, match="--compare-base"):
        main.__wrapped__([str(CLIP), "--compare-base"])


def test_int8_serving_adds_each_adapters_term_to_the_int8_base(adapters, shared_data):
    """`serve --quantize int8`: the base's products in int8 and each adapter's term in float32 beside
    them (the bank over int8 layers). Each row computes what a model built the same way by hand (int8
    base layers under the adapter's own LoRA/DoRA layers) computes, and served requests run through it."""
    torch = pytest.importorskip("torch")
    from mlx_whisper_lora.backend_torch.int8 import Int8Linear, int8_supported
    from mlx_whisper_lora.backend_torch.lora import LoRALinear
    from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim
    from mlx_whisper_lora.serve import start_worker
    from mlx_whisper_lora.serving.worker import CallOptions
    from mlx_whisper_lora.transcribe import load_for_inference

    if not int8_supported():
        pytest.skip("this PyTorch has no x86 int8 kernels (fbgemm)")

    def by_hand(name):
        model = load_for_inference("tiny.en", adapters.get(name), backend="torch", device="cpu")
        for module in list(model.model.modules()):
            for attr, child in list(module.named_children()):
                if isinstance(child, LoRALinear):
                    child.linear = Int8Linear(child.linear.weight, child.linear.bias)
                elif isinstance(child, torch.nn.Linear):
                    setattr(module, attr, Int8Linear(child.weight, child.bias))
        output = Int8Linear(model.model.decoder.token_embedding.weight)
        model.model.decoder.logits = lambda hidden: output(hidden)
        return model

    clip = str(sorted((shared_data / "librispeech_2spk").rglob("*.flac"))[0])
    audio = load_audio(clip)
    mel = log_mel_spectrogram(pad_or_trim(audio, 480000), 80)[None, :3000]
    tokens = np.array([[50257, 50362, 775, 547, 1986]])
    worker = start_worker("tiny.en", adapters, backend="torch", device="cpu", quantize="int8")
    try:
        bank = worker.bank
        layer = bank.modules.decoder.blocks[0].attn.query
        assert isinstance(layer.linear, Int8Linear) and layer.bank.terms  # a bank layer over an int8 layer
        logits, int8_error = {}, {}
        for name in (BASE, "demo", "dora"):
            bank.select([name])
            logits[name] = got = all_logits(bank.model, tokens, mel)
            f32 = load_for_inference("tiny.en", adapters.get(name), backend="torch", device="cpu")
            int8_error[name] = np.abs(got - all_logits(f32, tokens, mel)).max()
            if name != "dora":  # (a DoRA layer computes its product in float, so no int8 model to build by hand)
                expected = all_logits(by_hand(name), tokens, mel)
                # the same fbgemm kernels on the same int8 weights, each activation quantized over the same range:
                # identical (0.0 measured); 1e-3 of the largest logit leaves room for the float32 adapter term
                # added in another order tipping an activation to the next int8 level (one step, range / 255)
                assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), name
        # DoRA rows are as close to their float32 model as the int8 base is to its own: int8 rounding (2.27
        # measured for the base, by the steps of test_int8_inference.py), not float32 rounding, sets both, so a
        # factor of 2 is a ratio of like errors, independent of the CPU's float32 kernels
        assert int8_error["dora"] <= 2 * int8_error[BASE], int8_error
        assert np.abs(logits["demo"] - logits[BASE]).max() > 1e-2  # the adapter's term is there
        bank.select([BASE])
        futures = [worker.submit(audio, name, CallOptions(language="en")) for name in (BASE, "demo", "dora")]
        assert all(f.result(timeout=300)["text"].strip() for f in futures)
    finally:
        worker.stop()
