"""Operating the server: /metrics in Prometheus's text format (parsed by prometheus-client's own parser) counts
what was sent, /health and /ready answer (/ready 503 while the queue is full or the server drains), every request
leaves one JSON access-log line, and SIGTERM with 4 requests in flight lets all 4 finish, refuses new ones and
exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from server_process import librispeech_clips, start_server

httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--no-demo-adapter", "--max-batch", "4", "--drain-seconds", "120")
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def metrics(url) -> dict:
    """{(sample name, sorted labels): value} from /metrics, through prometheus-client's parser."""
    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def transcribe(url, clip, **data):
    with open(clip, "rb") as f:
        return httpx.post(url + "/v1/audio/transcriptions", files={"file": (clip.name, f)}, data=data, timeout=300)


def test_metrics_count_the_requests_sent_and_each_request_is_one_access_log_line(server, shared_data):
    proc, url = server
    clip = librispeech_clips(shared_data, 1)[0]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert httpx.get(url + "/ready").status_code == 200
    sent = [transcribe(url, clip), transcribe(url, clip), transcribe(url, clip, response_format="text"),
            transcribe(url, clip, model="nobody")]
    assert [r.status_code for r in sent] == [200, 200, 200, 404]
    got = metrics(url)
    counted = {labels: value for (name, labels), value in got.items() if name == "mlx_whisper_lora_requests_total"}
    assert counted == {(("model", "tiny.en"), ("response_format", "json"), ("status", "200")): 2,
                       (("model", "tiny.en"), ("response_format", "text"), ("status", "200")): 1,
                       (("model", "unknown"), ("response_format", "unknown"), ("status", "404")): 1}, counted
    assert got[("mlx_whisper_lora_request_seconds_count", (("model", "tiny.en"),))] == 3
    assert got[("mlx_whisper_lora_audio_seconds_count", (("model", "tiny.en"),))] == 3
    assert got[("mlx_whisper_lora_audio_seconds_sum", (("model", "tiny.en"),))] == pytest.approx(3 * 2.53, abs=0.05)
    assert got[("mlx_whisper_lora_batch_size_count", ())] == 3  # one batch each, sent one after another
    assert got[("mlx_whisper_lora_queue_depth", ())] == 0 and got[("mlx_whisper_lora_adapters_loaded", ())] == 0
    assert got[("mlx_whisper_lora_requests_in_progress", ())] == 0
    time.sleep(0.2)
    lines = [json.loads(line.split(" access ", 1)[1]) for line in proc.log_path.read_text().splitlines()
             if " access " in line and "/v1/audio/" in line]
    assert [(x["status"], x["model"]) for x in lines] == [(200, "tiny.en")] * 3 + [(404, "nobody")]
    assert all(x["audio_seconds"] == pytest.approx(2.53, abs=0.01) and 0 < x["decode_seconds"] <= x["seconds"]
               for x in lines[:3])


def test_sigterm_lets_the_requests_in_flight_finish_refuses_new_ones_and_exits_0(server, shared_data):
    proc, url = server
    clips = librispeech_clips(shared_data, 4)
    with ThreadPoolExecutor(4) as pool:
        flying = [pool.submit(transcribe, url, clip) for clip in clips]
        deadline = time.time() + 60
        while metrics(url)[("mlx_whisper_lora_requests_in_progress", ())] < 4:
            assert time.time() < deadline, "the 4 requests never reached the server"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        while True:  # the server turns away new work as soon as it has the signal
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 503:
                    break
            except httpx.TransportError:
                break
            time.sleep(0.02)
        try:
            late = transcribe(url, clips[0]).status_code
        except httpx.TransportError:
            late = "refused"
        assert late in (503, "refused")
        done = [f.result() for f in flying]
    assert [r.status_code for r in done] == [200] * 4 and all(r.json()["text"].strip() for r in done)
    assert proc.wait(timeout=120) == 0
    log = proc.log_path.read_text()
    assert "received SIGTERM: draining" in log and "Traceback" not in log


def test_ready_is_503_while_the_queue_is_full_or_the_server_drains():
    import numpy as np
    from fastapi.testclient import TestClient

    from mlx_whisper_lora.adapter_bank.bank import BASE, AdapterBank
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.serving.app import create_app
    from mlx_whisper_lora.serving.worker import CallOptions, Worker

    worker = Worker(lambda: AdapterBank(load_model("tiny.en")), max_pending=1, gather_seconds=0.0).start()
    try:
        client = TestClient(create_app(worker, "tiny.en"))
        assert client.get("/ready").json()["status"] == "ready"
        release = threading.Event()
        held = worker.run_on_thread(lambda: release.wait(60))
        while worker.pending:  # the thread has taken the call: it is held now
            time.sleep(0.01)
        waiting = worker.submit(np.zeros(16000, np.float32), BASE, CallOptions(language="en"))
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "queue full"
        release.set()
        held.result(timeout=60), waiting.result(timeout=120)
        assert client.get("/ready").status_code == 200
        client.app.state.draining = True
        assert client.get("/ready").json()["status"] == "draining"
        r = client.get("/v1/models")
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert client.get("/health").status_code == 200  # alive all the while
    finally:
        worker.stop()
