"""Adapters added and removed while the server runs (POST/DELETE /v1/adapters): each served transcript equals
the CLI's for its adapter, requests for other models keep being answered meanwhile, and anything outside
--adapter-root, NaN or made for another base model is refused with a 4xx while the server goes on serving."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from server_process import cli_text, librispeech_clips, make_adapter, start_server, stop_server

httpx = pytest.importorskip("httpx")
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import mlx.core as mx

    top = tmp_path_factory.mktemp("adapter_admin")
    root, outside = top / "root", top / "outside"
    root.mkdir()
    shutil.copytree(ASSETS / "demo_adapter", root / "voice")  # trained: it changes the clip's transcript
    make_adapter(root / "dora", "dora", 4, 1, modules=["query", "value", "mlp1"], freeze_encoder=False)
    make_adapter(outside / "elsewhere", "lora", 4, 7)
    make_adapter(root / "for_base", "lora", 4, 3, model="base")  # another base model's adapter
    shutil.copytree(root / "voice", root / "nan")
    weights = mx.load(str(root / "nan" / "adapters.safetensors"))
    name = next(k for k in sorted(weights) if k.endswith("lora_b"))
    weights[name] = weights[name] * float("nan")
    mx.save_safetensors(str(root / "nan" / "adapters.safetensors"), weights)
    (root / "garbled").mkdir()
    (root / "garbled" / "adapter_config.json").write_text("{not json")
    (root / "link_out").symlink_to(outside / "elsewhere", target_is_directory=True)
    (root / "file_link").mkdir()
    shutil.copy(root / "voice" / "adapter_config.json", root / "file_link")
    (root / "file_link" / "adapters.safetensors").symlink_to(outside / "elsewhere" / "adapters.safetensors")
    return root, outside


@pytest.fixture(scope="module")
def server(folders):
    proc, url = start_server("--no-demo-adapter", "--admin-key", "admin-key", "--adapter-root", str(folders[0]))
    yield url
    assert stop_server(proc) == 0


def transcribe(url, clip, model):
    with open(clip, "rb") as f:
        return httpx.post(url + "/v1/audio/transcriptions", files={"file": (clip.name, f)}, data={"model": model},
                          timeout=300)


def add(url, name, path, headers=ADMIN):
    return httpx.post(url + "/v1/adapters", json={"name": name, "path": path}, headers=headers, timeout=120)


def served(url):
    return [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]


def test_bad_adapters_and_paths_out_of_the_root_get_4xx_and_serving_goes_on(server, folders, shared_data):
    root, outside = folders
    refused = {
        "../outside/elsewhere": (403, "outside"), str(outside / "elsewhere"): (403, "outside"),
        "link_out": (403, "outside"), "file_link": (403, "links outside"), "no_such": (404, "no such"),
        "nan": (422, "NaN"), "for_base": (422, "trained on base"), "garbled": (422, "cannot load"),
    }
    for path, (status, why) in refused.items():
        r = add(server, "bad", path)
        assert r.status_code == status and why in r.json()["error"]["message"], (path, r.text)
    assert add(server, "voice", "voice", headers={}).status_code == 401
    assert add(server, "voice", "voice", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert add(server, "tiny.en", "voice").status_code == 409  # the base model's name
    assert httpx.delete(server + "/v1/adapters/bad", headers=ADMIN).status_code == 404
    assert served(server) == ["tiny.en"]
    r = transcribe(server, librispeech_clips(shared_data, 1)[0], "tiny.en")
    assert r.status_code == 200 and r.json()["text"].strip()


@pytest.mark.slow  # 45 s on 2 busy cores (the base is asked for all along); RUN_SLOW=1 runs it
def test_adapters_added_used_removed_and_readded_while_other_requests_run(server, shared_data, folders, tmp_path):
    root = folders[0]
    clip = librispeech_clips(shared_data, 1)[0]
    expected = {"tiny.en": cli_text(clip, None, tmp_path / "base"), "voice": cli_text(clip, root / "voice", tmp_path / "v"),
                "dora": cli_text(clip, root / "dora", tmp_path / "d")}
    assert expected["voice"] != expected["tiny.en"]  # ("To have", capitalised: the adapter's own style)
    base_texts, stop = [], threading.Event()

    def keep_asking_the_base():
        while not stop.is_set():
            r = transcribe(server, clip, "tiny.en")
            base_texts.append(r.json()["text"] if r.status_code == 200 else r.text)

    background = threading.Thread(target=keep_asking_the_base)
    background.start()
    try:
        for name in ("voice", "dora"):
            assert add(server, name, name).status_code == 201
        assert add(server, "voice", "dora").status_code == 409  # the name is taken
        assert served(server) == ["tiny.en", "dora", "voice"]
        with ThreadPoolExecutor(4) as pool:  # both adapters asked for at once: one batch, mixed rows
            texts = list(pool.map(lambda m: transcribe(server, clip, m).json()["text"], ["voice", "dora"] * 2))
        assert texts == [expected["voice"], expected["dora"]] * 2
        with ThreadPoolExecutor(3) as pool:  # requests for "voice" racing its removal: done, or a clear 404
            racing = [pool.submit(transcribe, server, clip, "voice") for _ in range(3)]
            assert httpx.delete(server + "/v1/adapters/voice", headers=ADMIN).status_code == 200
            for r in (f.result() for f in racing):
                assert (r.status_code == 200 and r.json()["text"] == expected["voice"]) or \
                       (r.status_code == 404 and "voice" in r.json()["error"]["message"]), r.text
        r = transcribe(server, clip, "voice")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert served(server) == ["tiny.en", "dora"]
        assert add(server, "voice", "voice").status_code == 201  # re-added under the same name
        assert transcribe(server, clip, "voice").json()["text"] == expected["voice"]
        assert transcribe(server, clip, "dora").json()["text"] == expected["dora"]
    finally:
        stop.set()
        background.join(timeout=300)
    assert base_texts and all(text == expected["tiny.en"] for text in base_texts), base_texts
    for name in ("voice", "dora"):
        assert httpx.delete(server + f"/v1/adapters/{name}", headers=ADMIN).status_code == 200


@pytest.mark.slow  # 53 s on 2 busy cores: a second server, on the torch engine
def test_the_torch_engine_adds_streams_and_removes_adapters_as_the_mlx_engine_does(folders, shared_data, tmp_path):
    pytest.importorskip("torch")
    openai = pytest.importorskip("openai")
    clip = librispeech_clips(shared_data, 1)[0]
    expected = cli_text(clip, folders[0] / "voice", tmp_path, "--backend", "torch")
    proc, url = start_server("--backend", "torch", "--no-demo-adapter", "--admin-key", "admin-key",
                             "--adapter-root", str(folders[0]))
    try:
        assert add(url, "nan", "nan").status_code == 422 and add(url, "for_base", "for_base").status_code == 422
        assert add(url, "voice", "voice").status_code == 201
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        with open(clip, "rb") as f:
            events = list(client.audio.transcriptions.create(model="voice", file=f, stream=True))
        assert "".join(e.delta for e in events[:-1]) == events[-1].text == expected
        assert transcribe(url, clip, "voice").json()["text"] == expected
        assert httpx.delete(url + "/v1/adapters/voice", headers=ADMIN).status_code == 200
        assert transcribe(url, clip, "voice").status_code == 404 and served(url) == ["tiny.en"]
    finally:
        assert stop_server(proc) == 0


def test_requests_queued_before_a_removal_finish_and_those_queued_after_it_get_adapter_gone(shared_data):
    """The worker's order, made deterministic: the thread is held while one request, the removal and another
    request queue up behind it; the first is answered with the adapter, the second with AdapterGone (a 404)."""
    from mlx_whisper_lora.adapter_bank.bank import AdapterBank
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.serving.worker import AdapterGone, CallOptions, Worker

    def load():
        bank = AdapterBank(load_model("tiny.en"))
        bank.add("voice", ASSETS / "demo_adapter")
        return bank

    worker = Worker(load, gather_seconds=0.0).start()
    try:
        audio = load_audio(str(librispeech_clips(shared_data, 1)[0]))
        release = threading.Event()
        held = worker.run_on_thread(lambda: release.wait(60))
        before = worker.submit(audio, "voice", CallOptions(language="en"))
        removal = worker.run_on_thread(lambda: worker.bank.remove("voice"))
        after = worker.submit(audio, "voice", CallOptions(language="en"))
        release.set()
        assert held.result(timeout=60) is True
        assert before.result(timeout=300)["text"].startswith(" To have")  # the adapter's capital: it was applied
        removal.result(timeout=60)
        with pytest.raises(AdapterGone, match="'voice' was removed"):
            after.result(timeout=60)
        assert "voice" not in worker.bank.adapters
    finally:
        worker.stop()
