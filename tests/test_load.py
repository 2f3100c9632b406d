"""The same weights from every format give the same model; bad files give one-line errors."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim
from mlx_whisper_lora.backend_mlx.load import save_hf as save_hf_folder
from mlx_whisper_lora.backend_mlx.load import ModelLoadError, load_model, quantize_model, resolve, save_model
from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

from numerics import MLX_FACTOR, assert_float32_close

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(jfk):
    mel = mx.array(pad_or_trim(log_mel_spectrogram(load_audio(jfk)), 3000, axis=0)[None])
    tokens = mx.array([[50257, 50362, 843, 523, 616, 5891, 3399, 1265, 407, 644]])
    return mel, tokens


def _logits(model, inputs):
    mel, tokens = inputs
    return np.array(model(mel, tokens).astype(mx.float32))


@pytest.fixture(scope="module")
def reference_logits(tiny_en, inputs):
    return _logits(tiny_en, inputs)


@pytest.fixture(scope="module")
def exact_logits(tiny_en_checkpoint, inputs):
    """tiny.en's logits in float64 and float32 by the torch twin: another implementation's float32 logits are
    held to the float64 ones within a multiple of the twin's own float32 rounding (numerics.py)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (the float64 reference)")
    from mlx_whisper_lora.backend_torch import model as tmodel

    twin = tmodel.Whisper(tiny_en_checkpoint.dims)
    tmodel.load_mlx_weights(twin, tiny_en_checkpoint.weights)
    mel, tokens = (torch.from_numpy(np.array(a)) for a in inputs)
    with torch.no_grad():
        reference = twin.eval()(mel, tokens).numpy()
        exact = twin.double()(mel.double(), tokens).numpy()
    return exact, reference


def test_ctranslate2_hf_and_mlx_folders_give_identical_logits(tiny_en, inputs, reference_logits, tmp_path):
    hf_dir = save_hf_folder(tiny_en, tmp_path / "hf")
    from_hf = load_model(hf_dir)
    # the same float32 weights through the same MLX kernels: identical (0.0 measured); 1e-4 is ~25 float32
    # units of the largest logit (35), room for nothing but a BLAS that blocks by alignment, far below a mix-up
    assert np.abs(_logits(from_hf, inputs) - reference_logits).max() <= 1e-4
    mlx_dir = save_model(tiny_en, tmp_path / "mlx")
    from_mlx = load_model(mlx_dir)
    assert np.abs(_logits(from_mlx, inputs) - reference_logits).max() <= 1e-4
    assert from_hf.alignment_heads.tolist() == tiny_en.alignment_heads.tolist() == from_mlx.alignment_heads.tolist()


def test_save_then_load_round_trips_exactly(tiny_en, tmp_path):
    from mlx.utils import tree_flatten

    folder = save_model(tiny_en, tmp_path / "m")
    again = load_model(folder)
    a, b = dict(tree_flatten(tiny_en.parameters())), dict(tree_flatten(again.parameters()))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.array_equal(a[k], b[k]), k
    assert json.loads((folder / "config.json").read_text())["model_type"] == "whisper"


def test_transformers_reproduces_our_logits(tiny_en, inputs, reference_logits, exact_logits, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    hf_dir = save_hf_folder(tiny_en, tmp_path / "hf")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    mel, tokens = inputs
    with torch.no_grad():
        out = model(
            input_features=torch.from_numpy(np.array(mel)).transpose(1, 2),
            decoder_input_ids=torch.from_numpy(np.array(tokens)).long(),
        ).logits.numpy()
    # two float32 implementations (transformers' torch kernels, ours in MLX), each held to the float64 logits
    assert_float32_close(out, *exact_logits, "transformers")
    assert_float32_close(reference_logits, *exact_logits, "MLX", MLX_FACTOR)


def test_saved_folder_loads_in_pypi_mlx_whisper(tiny_en, inputs, exact_logits, tmp_path):
    mlx_whisper_load = pytest.importorskip("mlx_whisper.load_models", reason="mlx-whisper is not installed")
    folder = save_model(tiny_en, tmp_path / "for-mlx-whisper")
    theirs = mlx_whisper_load.load_model(str(folder), dtype=mx.float32)
    mel, tokens = inputs
    logits = np.array(theirs.logits(tokens, theirs.embed_audio(mel)))
    # mlx-whisper's own model code (its attention and order), MLX's kernels: held to the float64 logits
    assert_float32_close(logits, *exact_logits, "mlx-whisper", MLX_FACTOR)
    assert theirs.alignment_heads.tolist() == tiny_en.alignment_heads.tolist()


def test_openai_pt_checkpoint(tiny_en_checkpoint, tiny_en, inputs, reference_logits, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    state = {}
    for k, v in tiny_en_checkpoint.weights.items():
        if k.endswith(("conv1.weight", "conv2.weight")):
            v = v.transpose(0, 2, 1)
        state[k.replace(".mlp1.", ".mlp.0.").replace(".mlp2.", ".mlp.2.")] = torch.from_numpy(np.ascontiguousarray(v))
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": tiny_en_checkpoint.dims.to_dict(), "model_state_dict": state}, path)
    # the same float32 weights (a transpose is exact), the same MLX kernels: identical, as above
    assert np.abs(_logits(load_model(path), inputs) - reference_logits).max() <= 1e-4


def test_quantized_folder_round_trip(tiny_en_checkpoint, inputs, reference_logits, tmp_path):
    from mlx_whisper_lora.backend_mlx.load import build_model

    model = quantize_model(build_model(tiny_en_checkpoint), bits=8, group_size=64)
    q_logits = _logits(model, inputs)
    folder = save_model(model, tmp_path / "q8")
    again = load_model(folder)
    assert json.loads((folder / "config.json").read_text())["quantization"] == {"group_size": 64, "bits": 8}
    assert np.array_equal(_logits(again, inputs), q_logits)
    # 8-bit stays close to the float model and keeps the argmax of every position
    assert (q_logits.argmax(-1) == reference_logits.argmax(-1)).all()


def test_hub_layout_cache_is_used_offline(tiny_en, inputs, reference_logits, tmp_path, monkeypatch):
    """A folder laid out as the Hugging Face cache resolves `tiny.en` and `openai/whisper-tiny.en`."""
    cache = tmp_path / "hub"
    snap = cache / "models--openai--whisper-tiny.en" / "snapshots" / "0123456789abcdef"
    save_hf_folder(tiny_en, snap)
    (cache / "models--openai--whisper-tiny.en" / "refs").mkdir(parents=True)
    (cache / "models--openai--whisper-tiny.en" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    for name in ("tiny.en", "openai/whisper-tiny.en"):
        ckpt = resolve(name)
        assert Path(ckpt.source).resolve() == snap.resolve()
    # the same float32 weights, the same MLX kernels: identical, as above
    assert np.abs(_logits(load_model("openai/whisper-tiny.en"), inputs) - reference_logits).max() <= 1e-4


def test_short_name_falls_back_to_offline_package_when_hub_is_off(monkeypatch, tmp_path):
    if OFFLINE_MODELS["base"].locate() is None:
        pytest.skip("offline base weights are not installed")
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    ckpt = resolve("base")
    assert ckpt.source == "base" and ckpt.dims.n_vocab == 51865 and ckpt.dims.n_text_layer == 6


@pytest.mark.parametrize("name", ["./no/such/folder", "definitely-not-a-model"])
def test_unknown_model_path_is_named(name):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(name)


def test_truncated_ctranslate2_file(tmp_path):
    location = OFFLINE_MODELS["tiny.en"].locate()
    if location is None:
        pytest.skip("offline tiny.en is not installed")
    folder = tmp_path / "ct2"
    folder.mkdir()
    data = location.model_parts[0].read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 3])
    (folder / "config.json").write_bytes((location.folder / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(folder)


def test_truncated_safetensors(tiny_en, tmp_path):
    folder = save_model(tiny_en, tmp_path / "m")
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100000])
    with pytest.raises(ModelLoadError, match="weights.safetensors"):
        load_model(folder)


def test_configs_without_a_dimension_and_a_damaged_pytorch_file_are_one_error(tiny_en, tmp_path):
    folder = save_model(tiny_en, tmp_path / "mlx")
    config = json.loads((folder / "config.json").read_text())
    del config["n_vocab"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"config.json.*n_vocab"):
        load_model(folder)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 384}))
    (hf / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 20)
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*download it again"):
        load_model(hf)
    (hf / "pytorch_model.bin").unlink()
    from safetensors.numpy import save_file

    save_file({"model.encoder.conv1.weight": np.zeros((384, 80, 3), np.float32)}, str(hf / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="config.json has no 'num_mel_bins'"):
        load_model(hf)


def test_folder_without_model(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no Whisper model"):
        load_model(tmp_path)


def test_weights_holding_nan_are_refused(tmp_path, tiny_en_checkpoint):
    """A model or adapter written by a diverged run is refused at load, naming the file and the weight,
    before anything decodes it into "!!!!" or fuses it into another model."""
    from mlx_whisper_lora.backend_mlx.adapters import apply_adapters, save_adapters
    from mlx_whisper_lora.backend_mlx.load import load_model, save_model
    from mlx_whisper_lora.formats.adapter_config import AdapterConfig
    from mlx_whisper_lora.formats.adapter_config import AdapterError
    from mlx_whisper_lora.formats.adapter_files import ADAPTER_FILE, read_adapter_tensors, write_adapter_tensors
    from mlx_whisper_lora.formats.checkpoint import ModelLoadError

    model = load_model("tiny.en")
    weight = model.decoder.blocks[0].mlp1.weight
    model.decoder.blocks[0].mlp1.weight = weight.at[0, 0].add(float("nan"))
    save_model(model, tmp_path / "damaged", dtype="float32")
    with pytest.raises(ModelLoadError, match="decoder.blocks.0.mlp1.weight holds NaN"):
        load_model(str(tmp_path / "damaged"))

    model = load_model("tiny.en")
    apply_adapters(model, AdapterConfig(rank=2, alpha=4, base_model="tiny.en", dims=model.dims.to_dict()))
    save_adapters(model, AdapterConfig(rank=2, alpha=4, base_model="tiny.en", dims=model.dims.to_dict()),
                  tmp_path / "adapters")
    tensors = read_adapter_tensors(tmp_path / "adapters")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.inf
    write_adapter_tensors(tmp_path / "adapters" / ADAPTER_FILE, tensors)
    with pytest.raises(AdapterError, match="NaN or infinite"):
        read_adapter_tensors(tmp_path / "adapters")
