"""API keys: every /v1/ request needs one once the server has any (401 in OpenAI's error shape otherwise),
through OpenAI's own Python client; and a server reachable beyond this machine refuses to start without one.
The same server (keyed) answers a short streamed request, and says adapter administration is off without an
admin key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlx_whisper_lora.serving.auth import Keys, keys_from
from server_process import librispeech_clips, start_server, stop_server

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

KEYS = ("first-key", "second-key")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--no-demo-adapter", "--api-key", KEYS[0], env={"MLX_WHISPER_LORA_API_KEY": f" ,{KEYS[1]}"})
    yield url
    assert stop_server(proc) == 0


def client(url: str, key: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_no_key_and_a_wrong_key_get_401_and_a_right_key_transcribes(server, shared_data):
    clip = librispeech_clips(shared_data, 1)[0]
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEYS[0]}"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/audio/transcriptions")):
            r = httpx.request(method, server + path, headers=headers, timeout=60)
            assert r.status_code == 401, (headers, path, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
            assert "Bearer" in error["message"]
    with open(clip, "rb") as f:
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, "wrong-key").audio.transcriptions.create(model="whisper-1", file=f)
    assert refused.value.status_code == 401
    with open(clip, "rb") as f:
        text = client(server, KEYS[0]).audio.transcriptions.create(model="whisper-1", file=f).text
    assert len(text.split()) >= 3, text
    assert [m.id for m in client(server, KEYS[1]).models.list()] == ["tiny.en"]  # the environment's key
    assert httpx.get(server + "/health").status_code == 200  # probes need no key
    assert httpx.get(server + "/").status_code == 200  # the page asks for the key itself


def test_keys_come_from_repeated_flags_and_a_comma_separated_variable():
    keys = keys_from(["a", " b "], "KEY_VAR", {"KEY_VAR": "c, ,a,d"})
    assert keys == ("a", "b", "c", "d")
    gate = Keys(api=keys, admin=("root",))
    assert gate.allows("Bearer d") and gate.allows("bearer root") and not gate.allows("Bearer e")
    assert not gate.allows(None) and not gate.allows("Bearer ") and not gate.allows("d")
    assert gate.admin_allows("Bearer root") and not gate.admin_allows("Bearer a")
    assert Keys().allows(None) and not Keys().admin_allows("Bearer anything")


def test_listening_beyond_loopback_without_a_key_is_refused_in_one_line():
    done = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "MLX_WHISPER_LORA_API_KEY"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "--api-key" in lines[0] and "--allow-no-auth" in lines[0]
    assert "Traceback" not in done.stderr


def test_adapter_administration_is_disabled_without_an_admin_key(server):
    r = httpx.post(server + "/v1/adapters", json={"name": "x", "path": "x"}, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled" and "--admin-key" in r.text
    r = httpx.delete(server + "/v1/adapters/x", headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]


def test_a_short_clip_streams_as_openai_events_that_add_up_to_the_text(server, shared_data):
    """(The 43 s recording, with the order of arrival, is tests/test_serve_streaming.py, slow.)"""
    clip = librispeech_clips(shared_data, 1)[0]
    with open(clip, "rb") as f:
        events = list(client(server, KEYS[0]).audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    with open(clip, "rb") as f:
        text = client(server, KEYS[0]).audio.transcriptions.create(model="whisper-1", file=f).text
    assert [e.type for e in events] == ["transcript.text.delta"] * (len(events) - 1) + ["transcript.text.done"]
    assert len(events) >= 2 and "".join(e.delta for e in events[:-1]) == events[-1].text == text
