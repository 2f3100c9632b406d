"""Whisper in MLX, with LoRA fine-tuning.

Importing the package sets up the process before any numerical library loads (an emulated older CPU when
asked, the fast BLAS), and keeps the module paths of modules that moved between rooms importable: outside
scripts name them by the paths issues and docs gave them, and the old name hands back the moved module itself."""

import importlib
import importlib.abc
import importlib.util
import sys

from . import blas, cpu_isa

cpu_isa.apply()  # an emulated older CPU (MLX_WHISPER_LORA_CPU_ISA), before any numerical library loads
blas.preload()  # must run before mlx.core is imported anywhere in this process

__version__ = "0.2.0"

MOVED = {f"{__name__}.{old}": f"{__name__}.{new}" for old, new in {
    "tuner.recording_prep": "preparing.recording", "tuner.recordings": "preparing.recordings",
    "tuner.long_clips": "preparing.long_clips", "tuner.clip_segments": "preparing.clip_segments",
    "data.text_alignment": "preparing.text_alignment",
    "tuner.evaluation": "scoring.evaluation", "tuner.testing": "scoring.testing",
    "tuner.no_speech": "scoring.no_speech", "tuner.score_keeping": "scoring.score_keeping",
    "tuner.long_form": "scoring.long_form", "tuner.long_form_test": "scoring.long_form_test",
    "tuner.run": "recipes.run", "tuner.self_replay": "recipes.self_replay",
    "tuner.replay_choice": "recipes.replay_choice", "tuner.alignment": "recipes.timing_heads",
    "formats.ctranslate2_export": "export.ctranslate2", "formats.ggml_export": "export.ggml",
    "formats.ggml_quantize": "export.ggml_quantize", "formats.hf_export": "export.hf",
    "formats.model_card": "export.model_card",
    "serving.adapter_bank": "adapter_bank.bank", "serving.bank_layer_mlx": "adapter_bank.layer_mlx",
    "serving.bank_layer_torch": "adapter_bank.layer_torch", "serving.layer_terms": "adapter_bank.layer_terms",
    "serving.side_by_side": "adapter_bank.side_by_side",
    "backend_mlx.frozen_head_loss": "backend_mlx.training.frozen_head_loss",
    "backend_mlx.cpu_softmax": "backend_mlx.training.cpu_softmax",
    "backend_mlx.chunked_attention": "backend_mlx.training.chunked_attention",
}.items()}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path (MOVED) as the module at its new one: one module object under both names."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(MovedModules())
