"""`transcribe --quantize int8`: int8 matrix products through PyTorch's kernels (backend_torch/int8.py)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_whisper_lora.backend_torch.int8 import Int8Linear, has_vnni, int8_supported  # noqa: E402

from numerics import reduction_bound  # noqa: E402

pytestmark = pytest.mark.skipif(not int8_supported(), reason="this PyTorch has no x86 int8 kernels (fbgemm)")


def test_int8_linear_equals_pytorchs_own_dynamic_quantization():
    """The reference: torch.ao's per-channel dynamic quantization (its observer sets the weight scales),
    run with the same activation range as ours (8 bits where the CPU has VNNI)."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(384, 1536)
    x = torch.randn(3, 7, 384)
    ours = Int8Linear(dense.weight, dense.bias)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(dense), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8)[0]
    reference = torch.ops.quantized.linear_dynamic(x, module._packed_params._packed_params, not has_vnni())
    exact = dense(x).detach()
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    # the same fbgemm kernel on the same int8 weights (the same scales) and the same activation range: identical
    # (0.0 measured, with and without VNNI); 1e-5 is room for nothing but the float32 rounding of a scale
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()
    # int8 is an approximation, a close one: how close follows from the quantization steps. A weight row j is
    # rounded to its step s_j = max|w_j| / 127.5 (off by at most s_j / 2), the activations to one step
    # t = range(x, 0) / 255 (127 without VNNI, reduce_range), off by at most t (half a step, plus up to half a step
    # where the rounded zero point clips the range's end); the int32 sums are exact. So output j is off by at
    # most sum_k (|x_k| s_j / 2 + t |w_jk| + t s_j / 2), plus float32 rounding of the reference product (k = 384).
    x64, w64 = x.double().reshape(-1, 384), dense.weight.detach().double()
    s = (w64.abs().amax(dim=1) / 127.5)[None, :]
    t = (max(x64.max().item(), 0.0) - min(x64.min().item(), 0.0)) / (255 if has_vnni() else 127)
    error = (ours.double().reshape(-1, 1536) - (x64 @ w64.T + dense.bias.detach().double())).abs()
    bound = x64.abs().sum(1, keepdim=True) * s / 2 + t * w64.abs().sum(1)[None, :] + 384 * t * s / 2
    assert (error <= bound + reduction_bound(384, float(x64.abs().max() * w64.abs().max()))).all()
    # and on the whole: the roundings are independent and uniform (variance step^2 / 12), so the squared error
    # over these 32,256 outputs is its expectation within a few percent (measured 0.995-1.003 of it); 1.25x
    # holds with room, and a wrong scale, zero point or row is off by a multiple (the fixed 0.02 of the norm was
    # 92% reached without VNNI, where t doubles)
    expected = (t ** 2 / 12 * (w64 ** 2).sum(1)[None, :] + s ** 2 / 12 * (x64 ** 2).sum(1, keepdim=True)).sum()
    assert error.norm() <= 1.25 * expected.sqrt(), (error.norm() / expected.sqrt()).item()


def _plain(text):
    from mlx_whisper_lora.export.verify import plain

    return plain(text)


def test_int8_transcripts_and_word_times_follow_float32(shared_data):
    import jiwer

    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.load import load_for_inference
    from mlx_whisper_lora.transcribe import transcribe

    clips = [shared_data / "whisper_mlx_classics/audio/jfk.flac",
             shared_data / "librispeech_test_clean_4/audio/1089-134691-0000.flac"]
    audios = [np.array(load_audio(p)) for p in clips]
    exact = load_for_inference("tiny.en", None)
    int8 = load_for_inference("tiny.en", None, backend="torch", device="cpu", quantize="int8")
    assert all(type(m).__name__ == "Int8Linear" for m in (int8.model.encoder.blocks[0].mlp1,
                                                           int8.model.decoder.blocks[-1].cross_attn.query))
    for audio in audios:
        a = transcribe(audio, exact, language="en", word_timestamps=True)
        b = transcribe(audio, int8, language="en", word_timestamps=True)
        assert jiwer.wer(_plain(a["text"]), _plain(b["text"])) <= 0.1, (a["text"], b["text"])
        words = [w for s in b["segments"] for w in s["words"]]
        starts = [w["start"] for w in words]
        assert words and starts == sorted(starts) and all(w["end"] >= w["start"] for w in words)
        # same words, same places: within 0.2 s of float32's on average (10 audio-token steps of 20 ms): int8's
        # rounding (test_int8_linear_equals_pytorchs_own_dynamic_quantization bounds it) moves the cross-attention
        # weights the word times follow by a few percent, shifting some words by a step or two, not a second
        first = [w["start"] for s in a["segments"] for w in s["words"]]
        if len(first) == len(starts):
            assert np.mean(np.abs(np.array(first) - np.array(starts))) < 0.2


def test_int8_merges_adapters_before_quantizing(shared_data):
    """The bundled demo adapter: int8 with the adapter follows float32 with it, not the base model."""
    from mlx_whisper_lora.assets_dir import DEMO_ADAPTER, DEMO_CLIP
    from mlx_whisper_lora.load import load_for_inference
    from mlx_whisper_lora.transcribe import transcribe

    adapted = transcribe(str(DEMO_CLIP), load_for_inference(None, str(DEMO_ADAPTER)), temperature=0.0)["text"]
    base = transcribe(str(DEMO_CLIP), load_for_inference("tiny.en", None), temperature=0.0)["text"]
    int8 = transcribe(str(DEMO_CLIP), load_for_inference(None, str(DEMO_ADAPTER), backend="torch", device="cpu",
                                                         quantize="int8"), temperature=0.0)["text"]
    import jiwer

    to_adapted, to_base = (jiwer.wer(_plain(t), _plain(int8)) for t in (adapted, base))
    # measured: one word of 21 differs from float32 with the adapter ("timer" for "cyber"), five from the base
    assert to_adapted <= 0.1 and to_adapted < to_base, (int8, adapted, base)


@pytest.mark.parametrize("args, message", [
    (["--backend", "mlx", "--quantize", "int8"], "runs in the torch back end"),
    (["--quantize", "int8", "--dtype", "float16"], "leave --dtype float16 out"),
    (["--quantize", "int8", "--device", "cuda"], "--device"),  # no GPU here; with one, int8 is for the CPU
])
def test_int8_misuse_is_one_line(tmp_path, args, message):
    from mlx_whisper_lora.assets_dir import DEMO_CLIP

    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", str(DEMO_CLIP), *args, "-o", str(tmp_path)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
