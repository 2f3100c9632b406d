"""The package's shape, checked from its source: layers import downward only (no cycle, lazy imports
included), no private name crosses a module, CLIs stay thin, framework-free layers stay free of
MLX and PyTorch, and every module imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlx_whisper_lora"
CLI_FILES = ("lora.py", "fuse.py", "transcribe.py", "convert.py", "serve.py")
FRAMEWORK_FREE = ("text", "formats", "tuner", "scoring", "recipes", "preparing", "data", "inference", "files.py", "errors.py")
# Which framework each room may import (lazy imports included); a module not named here imports neither, so
# the torch engine runs where MLX is not installed, and the reverse.
FRAMEWORKS = {
    "backend_mlx": {"mlx"},
    "backend_torch": {"torch"},
    "adapter_bank/layer_mlx.py": {"mlx"},
    "adapter_bank/layer_torch.py": {"torch"},
    "export/onnx.py": {"torch"},  # the ONNX graphs are traced by torch.onnx over the transformers model
}
# The places a module may touch another framework, and why.
FRAMEWORK_EXCEPTIONS = {
    ("formats/checkpoint.py", "torch"),  # .pt and pytorch_model.bin files are torch pickles (read with weights_only)
    ("tuner/backend_choice.py", "mlx"),  # --backend auto asks MLX whether it has a GPU here (when MLX is installed)
    ("tuner/backend_choice.py", "torch"),  # ... and, where MLX runs on CUDA, whether PyTorch sees that GPU
    ("data/audio.py", "mlx"),  # pad_or_trim pads an MLX array when given one (MLX is imported only then)
    ("inference/vad_chunks.py", "torch"),  # silero-vad is a torch model
    ("adapter_bank/bank.py", "mlx"),  # an MLX model's dense weights are read in MLX (only for an MLX model)
    ("export/formats/hf.py", "torch"),  # the transformers and PEFT exports are verified in transformers
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def type_checking_only(tree) -> set:
    """Import nodes under `if TYPE_CHECKING:` (annotations only; never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            out.update(id(n) for child in node.body for n in ast.walk(child))
    return out


def imports(path: Path):
    """(imported module, names) for every import in the file that can run, at any depth (lazy ones too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names]


def internal_edges() -> dict:
    """module -> set of package modules it imports (`from . import x` counts as importing x)."""
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for target, names in imports(path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in known and candidate != name:
                    graph[name].add(candidate)
                    if candidate != target:
                        break
    return graph


def test_every_module_imports():
    for name in modules():
        if name.startswith("mlx_whisper_lora.backend_torch"):
            pytest.importorskip("torch")
        importlib.import_module(name)


def find_cycles(graph: dict) -> list:
    """Every cycle a depth-first walk of `graph` (node -> set of nodes) runs into."""
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    # the package __init__ only preloads the BLAS; every module "imports" it implicitly, which is no cycle
    cycles = [c for c in find_cycles(internal_edges()) if "mlx_whisper_lora" not in c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def layer(module: str) -> str:
    """The folder a module belongs to (text, formats, tuner, ...), or the module itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_layers_form_no_cycle():
    """Folders import each other in one direction only (text, formats -> data, inference -> back ends -> tuner -> CLIs)."""
    edges = {}
    for module, targets in internal_edges().items():
        for target in targets:
            a, b = layer(module), layer(target)
            if a != b and b != "mlx_whisper_lora":
                edges.setdefault(a, set()).add(b)
    cycles = find_cycles(edges)
    assert not cycles, "cycles between folders: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name, path in modules().items():
        for target, names in imports(path):
            if not target.startswith("mlx_whisper_lora") and not target.startswith("."):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{name}: from {target} import {', '.join(names)}")
    assert not offenders, offenders


def test_cli_files_are_thin():
    for file in CLI_FILES:
        lines = len((PACKAGE / file).read_text().splitlines())
        assert lines <= 200, f"{file} has {lines} lines; move library code out of it"


def allowed_frameworks(relative: str) -> set:
    room = next((key for key in FRAMEWORKS if relative == key or relative.startswith(key + "/")), None)
    return FRAMEWORKS.get(room, set())


def test_each_module_imports_only_its_rooms_framework():
    """MLX only in MLX's rooms, PyTorch only in torch's (inference/ and data/ in neither: they hand numpy
    to either engine), so `pip install 'mlx-whisper-lora[torch]'` runs without MLX (tests/test_without_mlx.py)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for target, _ in imports(path):
            root = target.split(".")[0]
            if root in ("mlx", "torch") and root not in allowed_frameworks(relative) \
                    and (relative, root) not in FRAMEWORK_EXCEPTIONS:
                offenders.append(f"{relative} imports {target}")
    assert not offenders, offenders


@pytest.mark.parametrize("where", FRAMEWORK_FREE)
def test_framework_free_layers_import_neither_mlx_nor_torch(where):
    paths = [PACKAGE / where] if where.endswith(".py") else sorted((PACKAGE / where).rglob("*.py"))
    for path in paths:
        for target, _ in imports(path):
            root = target.split(".")[0]
            if (path.relative_to(PACKAGE).as_posix(), root) in FRAMEWORK_EXCEPTIONS:
                continue
            assert root not in ("mlx", "torch"), f"{path.relative_to(PACKAGE)} imports {target}"
            if where in ("text", "formats"):  # the tuner alone may dispatch to a back end
                assert not target.startswith(("mlx_whisper_lora.backend_", "mlx_whisper_lora.inference")), \
                    f"{path.relative_to(PACKAGE)} imports {target}"


def test_back_ends_import_neither_each_other_nor_the_tuner():
    for side, other in (("backend_mlx", "backend_torch"), ("backend_torch", "backend_mlx")):
        for path in sorted((PACKAGE / side).rglob("*.py")):
            for target, _ in imports(path):
                assert not target.startswith((f"mlx_whisper_lora.{other}", "mlx_whisper_lora.tuner",
                                              "mlx_whisper_lora.scoring", "mlx_whisper_lora.recipes")), \
                    f"{path.relative_to(PACKAGE)} imports {target}"


def test_both_engines_implement_the_training_backend_interface():
    pytest.importorskip("torch")
    from mlx_whisper_lora.backend_mlx.engine import MLXBackend
    from mlx_whisper_lora.backend_mlx.model import Whisper as MLXWhisper
    from mlx_whisper_lora.backend_torch.engine import TorchBackend
    from mlx_whisper_lora.backend_torch.model import Whisper as TorchWhisper
    from mlx_whisper_lora.formats.dims import ModelDimensions
    from mlx_whisper_lora.tuner.backend import TrainingBackend

    dims = ModelDimensions(n_mels=80, n_audio_ctx=30, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=1)
    for backend in (MLXBackend(MLXWhisper(dims)), TorchBackend(TorchWhisper(dims))):
        assert isinstance(backend, TrainingBackend), type(backend).__name__
        missing = [name for name in dir(TrainingBackend) if not name.startswith("_") and not hasattr(backend, name)]
        assert not missing, (type(backend).__name__, missing)


def test_no_folder_holds_more_than_twelve_modules():
    """Rooms that say what they hold: a folder past twelve modules is two rooms."""
    for folder in [PACKAGE] + sorted(p for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists()):
        count = len([m for m in folder.glob("*.py") if m.name != "__init__.py"])
        assert count <= 12, f"{folder.relative_to(PACKAGE)} holds {count} modules"


def test_moved_modules_import_under_their_old_names():
    """Outside scripts name modules by the paths issues and docs gave them; the old name is the new module."""
    from mlx_whisper_lora import MOVED

    assert "mlx_whisper_lora.tuner.run" in MOVED and "mlx_whisper_lora.tuner.self_replay" in MOVED
    for old, new in MOVED.items():
        if ".export." in new:
            pytest.importorskip("mlx.core")
        assert importlib.import_module(old) is importlib.import_module(new), old


def attribute_assignments(tree, names) -> list:
    """(line, text) of every `NAME.attr = ...`, `NAME.attr += ...` and `setattr(NAME, ...)` for NAME in `names`."""
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in names:
                    found.append((node.lineno, f"{t.value.id}.{t.attr} = ..."))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args and \
                isinstance(node.args[0], ast.Name) and node.args[0].id in names:
            found.append((node.lineno, f"setattr({node.args[0].id}, ...)"))
    return found


def test_nothing_sets_state_on_the_back_end_or_the_run_config_after_construction():
    """State arrives through constructors: the data-parallel world and the augmenter are passed in, and the
    run configuration is frozen once resolved (a change is a new config through dataclasses.replace)."""
    from dataclasses import fields

    from mlx_whisper_lora.tuner.run_config import RunConfig

    assert RunConfig.__dataclass_params__.frozen
    assert fields(RunConfig)
    offenders = []
    for name, path in modules().items():
        names = {"backend", "examples"}
        if name.split(".")[1:2] in (["tuner"], ["scoring"], ["recipes"], ["preparing"]):
            names.add("config")  # a RunConfig there (adapter configs go by adapter_config)
        offenders += [f"{path.relative_to(PACKAGE)}:{line}: {text}"
                      for line, text in attribute_assignments(ast.parse(path.read_text()), names)]
    assert not offenders, offenders
