"""PyTorch back end: the same Whisper, LoRA and files as the MLX one, for CUDA and as a reference.

torch is optional: importing this package without it raises a UserError saying how to install it.
"""

from ..errors import UserError

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise UserError("the torch back end needs PyTorch: pip install 'mlx-whisper-lora[torch]'") from None
