"""whisper.cpp's integer quantizations of the ggml export: the blocks are byte for byte those of ggml's
own reference quantizers (PyPI `gguf`, ggml's Python package), and whisper.cpp runs the files."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_whisper_lora.export.ggml_quantize import dequantize, quantize


@pytest.mark.parametrize("name", ["q8_0", "q5_0", "q4_0"])
def test_blocks_equal_ggml_reference_quantizers(name):
    gguf_quants = pytest.importorskip("gguf.quants", reason="gguf (ggml's Python package) is not installed")
    from gguf.constants import GGMLQuantizationType

    rng = np.random.default_rng(0)
    matrix = (rng.normal(size=(48, 384)) * 0.05).astype(np.float32)
    matrix[0, :32] = 0  # an all-zero block
    matrix[1, 7] = 0.5  # a block with one large weight
    matrix[2, :32] = -0.25  # ties of the largest magnitude
    matrix[3, 40:72] = np.linspace(-1, 1, 32)  # halves where rounding rules differ
    reference = gguf_quants.quantize(matrix, getattr(GGMLQuantizationType, name.upper())).tobytes()
    assert quantize(matrix, name) == reference
    back = dequantize(reference, matrix.shape, name)
    np.testing.assert_allclose(back, gguf_quants.dequantize(np.frombuffer(reference, np.uint8).reshape(48, -1),
                                                            getattr(GGMLQuantizationType, name.upper())), rtol=0,
                               atol=0)


def test_rows_that_do_not_fill_blocks_are_refused():
    with pytest.raises(ValueError, match="blocks of 32"):
        quantize(np.zeros((2, 40), np.float32), "q8_0", "decoder.odd")
