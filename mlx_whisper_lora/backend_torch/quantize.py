"""An 8-bit or 4-bit frozen base through bitsandbytes (`--bits 8|4`): QLoRA in the torch back end.

The linear layers of every encoder and decoder block become bitsandbytes layers (8: LLM.int8(),
the seed Colab recipe's `load_in_8bit`; 4: NF4 with fp32 or the run's compute dtype); the convs,
layer norms and the token embedding (which is also the output projection) stay in floating point,
as transformers leaves `proj_out`. bitsandbytes quantizes when the layer moves to its device.
LoRA/DoRA wrappers then train floating-point adapters on top; adapter files are unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import UserError

BLOCK_LINEARS = ("attn.query", "attn.key", "attn.value", "attn.out", "cross_attn.query", "cross_attn.key",
                 "cross_attn.value", "cross_attn.out", "mlp1", "mlp2")


def _bnb():
    try:
        import bitsandbytes
    except ImportError as e:
        raise UserError(f"--bits needs bitsandbytes ({e}): pip install bitsandbytes, or drop --bits") from None
    # its int8 matmul warns on every call that fp32 inputs are cast to fp16: once per layer and step
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return bitsandbytes


def _quantized(linear: nn.Linear, bits: int, compute_dtype: torch.dtype, device) -> nn.Module:
    bnb = _bnb()
    weight = linear.weight.detach().float().cpu()
    if bits == 8:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        # bitsandbytes repacks 4-bit weights for its CPU inference kernel on the first eval-mode call and
        # keeps them so; training after a validation pass then fails in that kernel (0.50): keep one layout
        layer.support_avx512bf16_for_cpu = False
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().float().cpu(), requires_grad=False)
    return layer.to(device)


def quantize_base(model, bits: int, compute_dtype: torch.dtype = torch.float32) -> int:
    """Replace the blocks' linear layers by `bits`-bit bitsandbytes layers, in place, before adapters
    are added. Returns how many layers were quantized."""
    if bits not in (4, 8):
        raise UserError(f"--bits {bits}: bitsandbytes quantizes to 8 or 4 bits")
    device = next(model.parameters()).device
    count = 0
    for stack in (model.encoder, model.decoder):
        for block in stack.blocks:
            for name in BLOCK_LINEARS:
                parent_name, _, attr = name.rpartition(".")
                parent = getattr(block, parent_name) if parent_name else block
                if parent is None or not isinstance(getattr(parent, attr), nn.Linear):
                    continue
                setattr(parent, attr, _quantized(getattr(parent, attr), bits, compute_dtype, device))
                count += 1
    model.quantization = {"bits": bits, "library": "bitsandbytes"}
    return count
