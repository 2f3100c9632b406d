"""The public loading API, as in 0.1: `load_model`, `save_model` and `quantize_model` of the MLX
Whisper (backend_mlx/load.py; the checkpoint readers are formats/checkpoint.py), and
`load_for_inference`, which gives either back end's model behind the decoder's interface."""

from typing import Optional

from .errors import UserError
from .formats.adapter_files import read_adapter_config

__all__ = ["load_model", "save_model", "quantize_model", "load_for_inference"]  # noqa: F822 (module __getattr__)


def __getattr__(name):
    """load_model, save_model and quantize_model come from MLX's side when asked for, so that importing
    this module (the torch engine does) needs no MLX."""
    if name in ("load_model", "save_model", "quantize_model"):
        from .backend_mlx import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_for_inference(model_name: Optional[str], adapter_path: Optional[str], dtype: str = "float32",
                       backend: str = "mlx", device: Optional[str] = None, adapter_scale: float = 1.0,
                       quantize: Optional[str] = None):
    """The base model, with adapters unfused if given (the base weights stay as they are), in the
    MLX port or in torch behind the interface the decoder uses; `adapter_scale` scales LoRA updates.
    `quantize="int8"`: int8 matrix products on the CPU, adapters merged first (torch back end only,
    backend_torch/int8.py says why)."""
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: the only inference quantization is int8")
    if quantize and backend != "torch":
        raise UserError("--quantize int8 runs in the torch back end (MLX's CPU int8 products are slower than its "
                        "float32 ones): use --backend torch, or leave --backend out")
    if quantize and dtype != "float32":
        raise UserError(f"--quantize int8 computes in int8 and float32: leave --dtype {dtype} out")
    base = model_name
    if adapter_path and base is None:
        base = read_adapter_config(adapter_path).base_model
    if backend == "torch":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise UserError("no engine to run on: the PyTorch engine needs PyTorch (pip install 'mlx-whisper-lora[torch]'), "
                            "the MLX engine needs MLX (pip install 'mlx-whisper-lora[mlx]', the default on macOS)"
                            if importlib.util.find_spec("mlx") is None else
                            "--backend torch needs PyTorch: pip install 'mlx-whisper-lora[torch]', or use --backend mlx")
        from .backend_torch.decoding import TorchDecodingModel
        from .backend_torch.engine import pick_device
        from .backend_torch.lora import load_adapters as load_torch_adapters
        from .backend_torch.model import load_model as load_torch_model

        model = load_torch_model(base, device=pick_device(device or ("cpu" if quantize else None)))
        if adapter_path:
            load_torch_adapters(model, adapter_path, adapter_scale)
        if quantize:
            from .backend_torch.int8 import quantize_int8

            quantize_int8(model)
        return TorchDecodingModel(model, dtype)
    if device:
        raise UserError("--device applies to --backend torch; MLX picks its own device")
    require_mlx()
    from .backend_mlx.load import load_model

    model = load_model(base, dtype=dtype)
    if adapter_path:
        from .backend_mlx.adapters import load_adapters

        load_adapters(model, adapter_path, adapter_scale)
    return model



def require_mlx(what: str = "") -> None:
    """A UserError naming the way out when MLX is not installed (a Windows or Linux GPU box with the torch engine).
    `what`: a command that runs in MLX only (its error then says so instead of suggesting --backend torch)."""
    import importlib.util

    if importlib.util.find_spec("mlx") is None:
        if what:
            raise UserError(f"{what} runs in the MLX engine for now and MLX is not installed here: "
                            "pip install 'mlx-whisper-lora[mlx]' (Linux, macOS)")
        raise UserError("MLX is not installed here: use --backend torch (pip install 'mlx-whisper-lora[torch]'), "
                        "or install MLX (pip install 'mlx-whisper-lora[mlx]')")


def default_inference_backend(quantize: Optional[str] = None) -> str:
    """The engine `transcribe` and `serve` use without --backend: MLX where it is installed, PyTorch for
    --quantize int8 (its kernels) and where MLX is not (Windows, a Linux GPU box with the torch extra)."""
    import importlib.util

    return "torch" if quantize or importlib.util.find_spec("mlx") is None else "mlx"
