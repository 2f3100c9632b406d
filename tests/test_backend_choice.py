"""`--backend auto`: which back end trains where, and the reason it logs."""

import pytest

from mlx_whisper_lora.tuner import backend_choice


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine has: MLX's accelerator ('' / 'metal' / 'cuda'), PyTorch, PyTorch's GPU."""
    def set_machine(mlx_gpu: str, torch_installed: bool, torch_cuda: bool):
        monkeypatch.setattr(backend_choice, "mlx_accelerated", lambda: mlx_gpu)
        monkeypatch.setattr(backend_choice, "torch_sees_cuda", lambda: torch_installed and torch_cuda)
        monkeypatch.setattr(backend_choice.importlib.util, "find_spec",
                            lambda name: object() if name != "torch" or torch_installed else None)
    return set_machine


def test_asked_for_back_end_is_kept_whatever_the_machine(machine):
    machine("cuda", True, True)
    assert backend_choice.choose_backend("mlx") == ("mlx", "asked for")
    machine("", False, False)
    assert backend_choice.choose_backend("torch") == ("torch", "asked for")


@pytest.mark.parametrize("mlx_gpu, torch_installed, torch_cuda, expected, why", [
    ("metal", True, False, "mlx", "MLX runs on metal"),
    ("cuda", True, True, "torch", "faster than MLX's CUDA back end"),
    ("cuda", True, False, "mlx", "MLX runs on cuda"),   # a CPU-only PyTorch beside MLX's CUDA build
    ("cuda", False, False, "mlx", "MLX runs on cuda"),
    ("", True, False, "torch", "CPU kernels for exp/erf are scalar"),
    ("", False, False, "mlx", "PyTorch is not installed"),
])
def test_auto_picks_the_faster_back_end_and_says_why(machine, mlx_gpu, torch_installed, torch_cuda, expected, why):
    machine(mlx_gpu, torch_installed, torch_cuda)
    name, reason = backend_choice.choose_backend("auto")
    assert name == expected
    assert why in reason


def test_a_torch_device_means_the_torch_back_end(machine):
    machine("metal", True, False)
    assert backend_choice.choose_backend("auto", "cpu")[0] == "torch"
