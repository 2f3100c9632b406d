"""How adapters are put into Whisper (framework-free): fine-tune type, modules, blocks, rank, scale, text style.

`AdapterConfig` is what `adapter_config.json` holds (formats/adapter_files.py reads and writes the
folder); `adapted_blocks` and `adapted_layers` pick the same blocks and linear layers in either
back end's model, whose attribute names are the same.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from ..errors import UserError

FORMAT_NAME = "mlx-whisper-lora"
FINE_TUNE_TYPES = ("lora", "dora", "full")

# Canonical module names inside a residual block.
MODULES = (
    "attn.query", "attn.key", "attn.value", "attn.out",
    "cross_attn.query", "cross_attn.key", "cross_attn.value", "cross_attn.out",
    "mlp1", "mlp2",
)
DEFAULT_MODULES = ("attn.query", "attn.value", "cross_attn.query", "cross_attn.value")

SHORT_PROJECTIONS = {"query": "query", "q": "query", "q_proj": "query", "key": "key", "k": "key", "k_proj": "key",
                     "value": "value", "v": "value", "v_proj": "value", "out": "out", "o": "out", "out_proj": "out"}
ATTENTION_STACKS = {"attn": "attn", "self_attn": "attn", "cross_attn": "cross_attn", "encoder_attn": "cross_attn"}
MLP_LAYERS = {"mlp1": "mlp1", "fc1": "mlp1", "mlp2": "mlp2", "fc2": "mlp2"}


class AdapterError(UserError):
    """Adapters that do not fit the model, or options that cannot build them."""


def parse_modules(names: Union[str, Sequence[str], None]) -> List[str]:
    """Canonical module names from user spellings: `query` (both attentions), `attn.value`,
    `cross_attn.q`, transformers names (`q_proj`, `encoder_attn.v_proj`, `fc1`), or `all`."""
    if names is None:
        return list(DEFAULT_MODULES)
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    out: List[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name == "all":
            picked = list(MODULES)
        elif name in MLP_LAYERS:
            picked = [MLP_LAYERS[name]]
        elif name in SHORT_PROJECTIONS:
            picked = [f"attn.{SHORT_PROJECTIONS[name]}", f"cross_attn.{SHORT_PROJECTIONS[name]}"]
        elif "." in name and name.split(".", 1)[0] in ATTENTION_STACKS and name.split(".", 1)[1] in SHORT_PROJECTIONS:
            stack, proj = name.split(".", 1)
            picked = [f"{ATTENTION_STACKS[stack]}.{SHORT_PROJECTIONS[proj]}"]
        else:
            raise AdapterError(
                f"unknown LoRA module {raw!r}; use any of {', '.join(MODULES)} "
                "(or query/key/value/out for both attentions, or all)"
            )
        out.extend(p for p in picked if p not in out)
    if not out:
        raise AdapterError("--lora-modules is empty; name at least one module (for example query value)")
    return [m for m in MODULES if m in out]


@dataclass
class AdapterConfig:
    """How adapters were put into the model; saved as adapter_config.json."""

    fine_tune_type: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    modules: List[str] = field(default_factory=lambda: list(DEFAULT_MODULES))
    num_layers: int = -1  # last N blocks of the encoder and of the decoder; -1: all
    freeze_encoder: bool = False
    layers: Optional[dict] = None  # explicit block indices {"encoder": [...], "decoder": [...]} (imported adapters)
    base_model: Optional[str] = None
    dims: Optional[dict] = None
    language: Optional[str] = None
    task: str = "transcribe"
    case_style: str = "keep"  # "upper"/"lower": one-case data, trained in the vocabulary's case, rendered back (case_style.py)
    punctuation: str = "keep"  # "none": the training transcripts had no punctuation, so transcripts are rendered without
    run: dict = field(default_factory=dict)
    # Decoder heads for word timing, re-selected after training when others follow the audio better
    # than the base model's (inference/alignment_heads.py); None: the base model's heads.
    alignment_heads: Optional[List[List[int]]] = None

    def __post_init__(self):
        if self.fine_tune_type not in FINE_TUNE_TYPES:
            raise AdapterError(f"--fine-tune-type {self.fine_tune_type!r}: use one of {', '.join(FINE_TUNE_TYPES)}")
        if int(self.rank) < 1:
            raise AdapterError(f"--rank must be at least 1, got {self.rank}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"--dropout must be in [0, 1), got {self.dropout}")
        self.modules = parse_modules(self.modules)

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)

    @property
    def whole_stacks(self) -> bool:
        """Full fine-tuning of whole stacks (embeddings and convs included), not of chosen blocks."""
        return self.layers is None and (self.num_layers is None or self.num_layers < 0)

    def to_json(self) -> dict:
        data = asdict(self)
        data["format"] = FORMAT_NAME
        data["version"] = 1
        # The mlx-lm layout too, so tools that read those keys find them.
        data["lora_parameters"] = {"rank": self.rank, "alpha": self.alpha, "scale": self.scale,
                                   "dropout": self.dropout, "keys": list(self.modules)}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "AdapterConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------- where adapters go (either framework's model)
def adapted_stacks(model, config: AdapterConfig) -> List[Tuple[str, object]]:
    """[(name, stack)]: the decoder, and the encoder unless it is frozen."""
    stacks = [] if config.freeze_encoder else [("encoder", model.encoder)]
    return stacks + [("decoder", model.decoder)]


def adapted_blocks(model, config: AdapterConfig) -> List[Tuple[str, object]]:
    """[(stack name, block)] that carry adapters: the last `num_layers` blocks of each adapted
    stack, or the explicit `layers` of imported adapters."""
    out = []
    for name, stack in adapted_stacks(model, config):
        blocks = list(stack.blocks)
        if config.layers is not None:
            chosen = [blocks[i] for i in config.layers.get(name, []) if i < len(blocks)]
        elif config.num_layers is None or config.num_layers < 0 or config.num_layers >= len(blocks):
            chosen = blocks
        else:
            chosen = blocks[len(blocks) - config.num_layers:] if config.num_layers else []
        out += [(name, block) for block in chosen]
    return out


def adapted_layers(model, config: AdapterConfig) -> List[Tuple[object, str]]:
    """[(parent module, attribute)] of every linear layer that gets a LoRA/DoRA wrapper."""
    out = []
    for _, block in adapted_blocks(model, config):
        for name in config.modules:
            parent_name, _, attr = name.rpartition(".")
            parent = getattr(block, parent_name) if parent_name else block
            if parent is not None:  # encoder blocks have no cross-attention
                out.append((parent, attr))
    return out


@contextmanager
def wrappers_swapped_out(wrappers: Sequence[Tuple[object, str, object]]):
    """For the duration of the block, each (parent, attribute, wrapper) has its wrapper replaced by the
    layer it wraps (`wrapper.linear`), then put back: the base model without a second copy (the
    teacher of --replay-distill). Either back end finds its wrappers; the swap is the same."""
    for parent, attr, wrapper in wrappers:
        setattr(parent, attr, wrapper.linear)
    try:
        yield
    finally:
        for parent, attr, wrapper in wrappers:
            setattr(parent, attr, wrapper)
