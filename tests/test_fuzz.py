"""Fuzzing the readers of files a user is handed: the CTranslate2 model.bin reader, CSV/JSONL manifests,
adapter weights and audio. Whatever the bytes, the only exception allowed is the package's own error
(a one-line message for the user). Short and seeded in the suite; `FUZZ_EXAMPLES=N` runs N random
(unseeded) cases per reader, the longer campaign:

    FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest -q tests/test_fuzz.py
"""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from mlx_whisper_lora.errors import UserError  # noqa: E402
from mlx_whisper_lora.formats.ctranslate2 import CTranslate2FormatError, read_model_bin  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SEEDED = "FUZZ_EXAMPLES" not in os.environ
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEEDED, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder whose files every example overwrites: a campaign of a million examples must not
    leave a million folders behind (one did, and filled the disk)."""
    return tmp_path_factory.mktemp("fuzz")


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def small_model_bin() -> bytes:
    """A valid CTranslate2 model.bin (version 6) with two variables and an alias."""
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 2)
    for name, array, code in (("encoder/w", np.arange(6, dtype=np.float32).reshape(2, 3), 0),
                              ("decoder/b", np.arange(4, dtype=np.float16), 4)):
        out += _string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<B", code) + struct.pack("<I", array.nbytes) + array.tobytes()
    return out + struct.pack("<I", 1) + _string("decoder/alias") + _string("decoder/b")


def test_the_small_model_bin_reads():
    variables = read_model_bin_bytes(small_model_bin())
    assert variables["encoder/w"].shape == (2, 3) and variables["decoder/alias"] is variables["decoder/b"]


def test_dims_whose_product_wraps_around_are_damage():
    """Found by a long campaign: shape (2**31, 2**31, 4) multiplies to 0 in int64, like an empty tensor."""
    blob = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 1)
    blob += _string("x") + struct.pack("<B", 3) + struct.pack("<III", 2**31, 2**31, 4)
    blob += struct.pack("<B", 0) + struct.pack("<I", 0)  # float32, no bytes
    with pytest.raises(CTranslate2FormatError, match="damaged"):
        read_model_bin_bytes(blob)
    empty = blob.replace(struct.pack("<III", 2**31, 2**31, 4), struct.pack("<III", 0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(CTranslate2FormatError, match="damaged"):  # 0 values, but numpy cannot count the others
        read_model_bin_bytes(empty)


def read_model_bin_bytes(data: bytes, folder=None):
    path = Path(folder or "/tmp") / f"fuzz_model_{os.getpid()}.bin"
    path.write_bytes(data)
    try:
        return read_model_bin(path)
    finally:
        path.unlink()


@FUZZ
@given(st.data())
def test_model_bin_reader_only_raises_its_own_error(data):
    blob = bytearray(small_model_bin())
    for _ in range(data.draw(st.integers(1, 6))):  # flip bytes, then maybe cut the file
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        read_model_bin_bytes(bytes(blob[:cut]))
    except CTranslate2FormatError:
        pass


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["csv", "jsonl"]))
def test_manifest_reader_only_raises_its_own_error(scratch, data, suffix):
    from mlx_whisper_lora.data.manifests import read_manifest

    path = scratch / f"train.{suffix}"
    header = b"audio,text,duration\n" if suffix == "csv" else b""
    path.write_bytes(header + data)
    try:
        read_manifest(path)
    except UserError:
        pass


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none()), min_size=1, max_size=4))
def test_manifest_fields_of_any_type_only_raise_its_own_error(scratch, values):
    from mlx_whisper_lora.data.manifests import read_manifest

    path = scratch / "train.jsonl"
    row = dict(zip(["audio", "text", "duration", "language"], values))
    path.write_text(json.dumps(row) + "\n")
    try:
        read_manifest(path)
    except UserError:
        pass


@FUZZ
@given(st.binary(max_size=600))
def test_adapter_reader_only_raises_its_own_error(scratch, data):
    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors

    folder = scratch
    (folder / "adapters.safetensors").write_bytes(data)
    (folder / "adapter_config.json").write_text("{}")
    try:
        read_adapter_tensors(folder)
    except UserError:
        pass


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None, derandomize=SEEDED, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=300), st.sampled_from([".wav", ".flac", ".ogg"]))
def test_audio_loader_only_raises_its_own_error(scratch, data, suffix):
    from mlx_whisper_lora.data.audio import load_audio

    path = scratch / f"clip{suffix}"
    # half the cases start as a real WAV header, so the decoder gets past the magic bytes
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " if data[:1] and data[0] % 2 else b""
    path.write_bytes(header + data)
    try:
        load_audio(path)
    except UserError:
        pass
