"""A row that falls into a repetition loop stops once its text already fails Whisper's compression
test (stop_loops_at), in both back ends; the rows that do not loop decode exactly as before.

The looping reading is real: tiny.en reading Yoruba speech as English (the base model's passes
before training read the training audio this way, and loop on some of it)."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_whisper_lora.inference.decoding import compression_ratio, looping_rows
from mlx_whisper_lora.text.tokenizer import get_tokenizer

LOOP_RATIO = 2.4
# train utterances tiny.en loops on (-13: "... the city of the city of ...") and two it reads plainly
CLIPS = ["yo-200625-215447-13", "yo-200625-215447-10", "yo-200625-215447-12"]


def test_looping_rows_flags_text_that_compresses_past_the_ratio():
    tok = get_tokenizer(False)
    loop = tok.encode(" I am a student." * 12)
    plain = tok.encode(" The quick brown fox jumps over the lazy dog near the river bank.")
    rows = np.full((3, len(loop)), tok.eot, dtype=np.int64)
    rows[0], rows[1, :len(plain)], rows[2, :8] = loop, plain, loop[:8]  # end tokens pad the shorter rows
    assert looping_rows(tok, rows, LOOP_RATIO).tolist() == [True, False, False]
    assert compression_ratio(tok.decode(loop).strip()) > LOOP_RATIO


@pytest.fixture(scope="module")
def yoruba_mels(shared_data, tiny_en_checkpoint):
    from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim

    folder = shared_data / "yoruba_ogunlao" / "audio"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (../shared/data/yoruba_ogunlao)")
    return np.stack([np.array(log_mel_spectrogram(pad_or_trim(load_audio(str(folder / f"{c}.flac"))),
                                                  tiny_en_checkpoint.dims.n_mels)) for c in CLIPS])


def _check(full, stopped):
    assert compression_ratio(full[0]) > LOOP_RATIO, full[0]  # the loop runs on to the token limit
    assert len(stopped[0]) < len(full[0]) / 2 and full[0].startswith(stopped[0]), stopped[0]
    assert compression_ratio(stopped[0]) > LOOP_RATIO  # judged a loop at its end too
    assert stopped[1:] == full[1:]  # the other rows as before


def test_torch_greedy_decoding_stops_a_looping_row(yoruba_mels, tiny_en_checkpoint):
    torch = pytest.importorskip("torch")
    from mlx_whisper_lora.backend_torch import model as tmodel
    from mlx_whisper_lora.backend_torch.decoding import greedy_decode

    model = tmodel.Whisper(tiny_en_checkpoint.dims)
    tmodel.load_mlx_weights(model, tiny_en_checkpoint.weights)
    mels = torch.from_numpy(yoruba_mels)
    _check(greedy_decode(model.eval(), mels), greedy_decode(model, mels, stop_loops_at=LOOP_RATIO))


def test_mlx_greedy_decoding_stops_a_looping_row(yoruba_mels, tiny_en):
    import mlx.core as mx

    from mlx_whisper_lora.inference.decoding import DecodingOptions, decode

    options = DecodingOptions(language="en", without_timestamps=True)
    full = [r.text for r in decode(tiny_en, mx.array(yoruba_mels), options)]
    stopped = [r.text for r in decode(tiny_en, mx.array(yoruba_mels),
                                      DecodingOptions(language="en", without_timestamps=True,
                                                      stop_loops_at=LOOP_RATIO))]
    _check(full, stopped)
