"""One registry of export formats (mlx_whisper_lora/export/registry.py): `fuse` and `convert` take the same
names from it, a format added as one file in export/formats/ appears in both, in --help and in the model card,
and `convert` writes every whole-model format without a separate list of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_whisper_lora import convert, fuse
from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.export.registry import FORMATS, NAMES

ROOT = Path(__file__).resolve().parent.parent
DEMO_ADAPTER = ROOT / "mlx_whisper_lora" / "assets" / "demo_adapter"


def _choices(parser, flag):
    return next(a.choices for a in parser._actions if flag in a.option_strings)


def test_fuse_and_convert_accept_the_same_format_names_from_the_registry():
    assert _choices(fuse.build_parser(), "--export-format") == _choices(convert.build_parser(), "--export-format") == NAMES
    assert set(_choices(fuse.build_parser(), "--quantize")) == {q for f in FORMATS.values() for q in f.quantizations}
    for name, record in FORMATS.items():  # every record says how it is verified and loaded
        assert record.runner is not None and record.runtime_module and "{path}" in record.loading, name


def test_convert_refuses_an_adapter_format_and_a_quantization_the_format_lacks(tmp_path):
    with pytest.raises(UserError, match="convert writes whole models"):
        convert.convert("tiny.en", str(tmp_path / "p"), export_format="peft")
    with pytest.raises(UserError, match="--q-bits 5 is not available for --export-format mlx"):
        convert.convert("tiny.en", str(tmp_path / "m"), quantize=True, q_bits=5)


def test_convert_to_mlx_without_an_engine_keeps_the_weights(tiny_en_checkpoint, tmp_path):
    """Floats are rewritten from the checkpoint's own arrays: a float32 MLX folder reads back bit for bit."""
    from mlx_whisper_lora.formats.checkpoint import resolve

    out = convert.convert("tiny.en", str(tmp_path / "mlx32"), dtype="float32")
    back = resolve(str(out))
    assert back.dims == tiny_en_checkpoint.dims
    for name, value in tiny_en_checkpoint.weights.items():
        assert np.array_equal(back.weights[name], np.asarray(value, dtype=np.float32)), name


def test_a_format_added_as_one_file_reaches_fuse_convert_help_and_the_model_card(tmp_path):
    """The registry lists export/formats/: one new file with its record is the whole change (here the folder is
    extended in a subprocess instead of writing into the package)."""
    extra = tmp_path / "formats"
    extra.mkdir()
    (extra / "npz.py").write_text(textwrap.dedent('''
        """numpy .npz archives (an example format)."""
        import numpy as np
        from mlx_whisper_lora.export.registry import ExportFormat


        def write(job):
            job.save_path.mkdir(parents=True, exist_ok=True)
            np.savez(job.save_path / "weights.npz", **job.model.float_weights())
            return job.save_path


        FORMAT = ExportFormat(name="npz", description="a numpy archive", dtypes=("float32",), write=write,
                              library="numpy", runtime="numpy", runtime_module="numpy",
                              runner=lambda path, language: None, loading="np.load('{path}/weights.npz')")
        '''))
    script = textwrap.dedent(f'''
        import sys
        import mlx_whisper_lora.export.formats as formats
        formats.__path__.append({str(extra)!r})
        from mlx_whisper_lora import convert, fuse
        print(fuse.build_parser().format_help())
        fuse.main(["--adapter-path", {str(DEMO_ADAPTER)!r}, "--save-path", {str(tmp_path / "fused")!r},
                   "--export-format", "npz"])
        convert.main(["tiny.en", "--save-path", {str(tmp_path / "converted")!r}, "--export-format", "npz"])
        ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "{mlx,hf,peft,ct2,ggml" in done.stdout and "npz: a numpy archive" in " ".join(done.stdout.split())
    fused = np.load(tmp_path / "fused" / "weights.npz")
    base = np.load(tmp_path / "converted" / "weights.npz")
    query = "decoder.blocks.0.attn.query.weight"
    assert fused[query].shape == base[query].shape and not np.array_equal(fused[query], base[query])  # adapters in
    card = (tmp_path / "fused" / "README.md").read_text()
    assert "library_name: numpy" in card and "exported as a numpy archive" in card
    assert json.loads((DEMO_ADAPTER / "adapter_config.json").read_text())["base_model"] in card
