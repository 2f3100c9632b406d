"""stream=true through OpenAI's Python client: the segments of a 43 s recording (two 30 s windows) arrive as
transcript.text.delta events while the later window is still being decoded, then transcript.text.done; the
deltas add up to the text of the same request unstreamed. And verbose_json names the language as OpenAI does."""

from __future__ import annotations

import time

import pytest

from server_process import long_recording, start_server, stop_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client():
    proc, url = start_server("--no-demo-adapter")
    yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    assert stop_server(proc) == 0


@pytest.mark.slow  # 20 s on 2 busy cores (43 s of audio decoded twice); a short clip streams by default
def test_streamed_segments_arrive_as_they_are_decoded_and_add_up_to_the_text(client, shared_data, tmp_path):
    recording = long_recording(shared_data, tmp_path / "long.wav")
    with open(recording, "rb") as f:
        whole = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert whole.language == "english" and whole.duration == pytest.approx(43, abs=1.5)
    assert max(s.start for s in whole.segments) > 30  # the second window holds segments too
    events, arrived = [], []
    started = time.perf_counter()
    with open(recording, "rb") as f:
        for event in client.audio.transcriptions.create(model="whisper-1", file=f, stream=True):
            events.append(event)
            arrived.append(time.perf_counter() - started)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events[len(deltas):]] == ["transcript.text.done"] and len(deltas) >= 2
    assert "".join(e.delta for e in deltas) == events[-1].text == whole.text
    # the first window's deltas left before the second window was decoded: a gap before the last deltas
    gaps = [later - earlier for earlier, later in zip(arrived, arrived[1:])]
    print(f"deltas at {[round(t, 2) for t in arrived]} s")
    assert arrived[0] < arrived[-1] and max(gaps) > 0.1, arrived
