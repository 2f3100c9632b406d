"""int8 inference on an x86 CPU (`transcribe --quantize int8`): every matrix product of the torch
model through PyTorch's dynamic-int8 kernels (fbgemm), as faster-whisper's int8 does through CTranslate2.

Weights are quantized per output row (symmetric, 8 bits); activations are quantized per call from
their own range. The convolutions, layer norms and the embedding lookup stay float32. The output
projection (the token embedding, tied) is int8 too: at one token per step it is the decoder's
largest read, 80 MB in float32 for a 51,864-token vocabulary. Measured on the 2-core EPYC
(benchmarks/benchmark_int8.py): logits 0.17 ms against 1.45 ms (numpy float32) and 12.7 ms (MLX's 8-bit
`quantized_matmul`, whose CPU kernels are slower than its float32 ones), so this lives in the torch
back end. Adapters are merged into the weights before quantizing.

Written here rather than through `torch.ao.quantization.quantize_dynamic`, which PyTorch has
deprecated; the two kernels below are what that module calls.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from ..errors import UserError
from .cpu_flags import cpu_has
from .lora import LoRALinear


def int8_supported() -> bool:
    return any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm"))


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as packed int8 rows (fbgemm) and x quantized per call."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        w = weight.detach().float().contiguous()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        # scale as PyTorch's symmetric per-channel observer sets it (range / 255)
        scales = (w.abs().amax(dim=1) / 127.5).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # PyTorch flags quantized-tensor creation as deprecated
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (out, in) float32 weight, for code that reads a linear layer's weight (the
        serving bank's shape checks and DoRA norms); the products never use it."""
        return torch.ops.quantized.linear_unpack(self._packed)[0].dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one activation range per call (fbgemm's dynamic quantization); a range per 64 or 16 encoder
        # frames instead measured no better (normalized WER 4.70% and 4.78% against 4.78%)
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, not has_vnni())
        return y.to(x.dtype)


def has_vnni() -> bool:
    """Whether the CPU sums int8 products in 32 bits (VNNI). Without it fbgemm's kernels add pairs in
    16 bits, which can saturate, so activations get 7 bits (`reduce_range`, PyTorch's own choice);
    with it they get all 8. Measured on 240 LibriSpeech utterances (tiny.en): normalized WER 4.78%
    with 8 bits, 5.22% with 7, 4.49% in float32."""
    return cpu_has("avx512_vnni", "avx_vnni")


def _dense(module: nn.Module) -> nn.Module:
    """An adapter wrapper (LoRA or DoRA) merged into its plain linear layer; anything else unchanged."""
    return module.fuse() if isinstance(module, LoRALinear) else module


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        dense = _dense(child)
        if isinstance(dense, nn.Linear):
            setattr(module, name, Int8Linear(dense.weight, dense.bias))
        else:
            _swap_linears(child)


def quantize_int8(model) -> None:
    """Swap, in place, every linear layer of the encoder and decoder blocks (adapters merged first)
    and the output projection for int8 versions. Inference only: there are no gradients."""
    if not int8_supported():
        raise UserError("--quantize int8 needs PyTorch's x86 int8 kernels (fbgemm), which this machine's "
                        "PyTorch lacks; leave --quantize out to transcribe in float32")
    if next(model.parameters()).device.type != "cpu":
        raise UserError("--quantize int8 is for the CPU (--device cpu); on a GPU use --dtype float16 or bfloat16")
    model.eval()
    _swap_linears(model.encoder.blocks)
    _swap_linears(model.decoder.blocks)
    output = Int8Linear(model.decoder.token_embedding.weight)
    model.decoder.logits = lambda hidden: output(hidden)
    model.decoder.int8_output = output  # kept as a submodule, so that it is part of the model
