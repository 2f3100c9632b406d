"""The memory a training run will peak at, estimated before it starts, and the batch that fits.

Why: a run that does not fit fails late (after loading, reading the data, the base model's passes) with an
allocator error or a machine deep in swap; the estimate lets the run stop at once, name the flags that would
fit, and lets `--batch-size auto` pick the largest batch that fits.

The estimate is built from the computation, term by term, in bytes (B: the micro-batch of one process, T:
decoder positions of the longest training label, prompt included, F: audio frames (1500), D_a/D_t: encoder/
decoder width, L_a/L_t: layers, H: heads, V: vocabulary, e: bytes of an activation in the compute dtype):

- `weights`: the base model's parameters in their dtype; with `--bits` the blocks' linear layers at that many
  bits plus a scale and bias per group of 64.
- `trainable`: the trained parameters with their gradients and optimizer moments (float32), as many copies as
  the engine keeps (`ENGINES[...]["trainable_copies"]`).
- `states`: the frozen encoder's cached states (F x D_a float32 per utterance) and, within the same
  `--cache-memory-gb`, the decoder's cross-attention base keys and values (L_t x 2 x F x D_t) that both engines
  keep with them; the validation cache has an eighth of that memory. Zero when the encoder trains or is not cached.
- `step`: what one micro-batch keeps for its backward pass, the largest of
  - decoder activations: `decoder` x B x T x D_t x e per layer, the cross-attention weights
    (`cross_weights` x B x H_t x T x F x 4) per layer, and the batch's cross-attention keys and values when
    the engine forms them every step (`cross_kv_copies` x L_t x 2 x B x F x D_t x e);
  - the loss over the frozen output projection: `loss_copies` x min(B x T, 512) x V x 4 (the engines form
    the logits of 512 target rows at a time, and keep none of them);
  - with the encoder trained: `encoder` x B x F x D_a x e per layer (one layer's, plus each layer's input,
    with `--grad-checkpoint`; B: the rows of one pass where the engine takes the batch in passes,
    `rows_per_pass`, the MLX engine's ENCODER_ROWS_PER_PASS), the decoder's cross-attention keys and values,
    and the (B, H_a, F, F) float32 self-attention matrices where the engine materializes them
    (`attention_copies` per layer: MLX on a CPU without `--grad-checkpoint`; torch's bf16 products on a CPU
    with bf16 dot products);
  - encoding a batch for the cache (no gradient): `encode` x B x F x D_a x e of one layer at a time, and
    `encode_kv_copies` of the batch's cross-attention keys and values (torch forms them for the batch, then
    keeps a copy of each utterance's).
- `process`, on the CPU only: what the process holds besides the weights (the interpreter, the frameworks'
  libraries, the data, the tokenizer), read from the process's resident memory when the plan is made
  (`RUNTIME_GB` when it cannot be), plus what a training process gains beyond its arrays (`cpu_runtime_gb`:
  the allocators' caches of freed buffers, the frameworks' scratch and thread pools).

The coefficients per engine (`ENGINES`) come from measured peaks (benchmarks/measure_memory_plan.py, the table
in docs/benchmarks.md): re-measure them there when an engine changes what it keeps.

Against what: the device's memory (`device_memory`): on a CPU the memory available to this process (what the
system has available plus what the process holds already); on CUDA what is free plus what the framework holds
already; on an Apple GPU MLX's recommended working set. `--max-memory-gb` caps it.

When a run is refused: only when the estimate exceeds the limit by more than the estimate's tolerance
(`TOLERANCE`, 25%): within it, the run may well fit (a CPU run a little over the available memory pages
out caches and, with swap, slows down rather than fails), so it starts with a warning. A pessimistic estimate
must never block a run that would have fitted; an optimistic one costs, at worst, the failure the run would have
had without a plan. `--batch-size auto` picks by the estimate itself, with no tolerance: the largest batch whose
estimate fits.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..formats.adapter_config import parse_modules
from ..formats.dims import ModelDimensions
from .run_config import DEFAULT_BATCH  # the global batch of --batch-size auto is this x --grad-accumulation-steps

GB = 1 << 30  # as --cache-memory-gb and the loop's peak memory count
TOLERANCE = 0.25  # the estimate's measured error stays within this (docs/benchmarks.md)
LOSS_ROWS = 512  # rows of logits the frozen-head loss forms at a time (both engines' BLOCK_ROWS)
RUNTIME_GB = 0.6  # the process besides the weights when its resident memory cannot be read (measured: Linux, tiny.en)

# What each engine keeps, in the units of the module docstring; measured (benchmarks/measure_memory_plan.py, the
# table in docs/benchmarks.md; MLX: the engine from 57e926b on, a training encoder's step in passes of 2 rows).
# When an engine changes what it keeps, measure again with that script and change the numbers here.
ENGINES: Dict[str, Dict[str, float]] = {
    "torch": dict(trainable_copies=4, decoder=24, cross_weights=1.5, cross_kv_copies=0, loss_copies=2,
                  encoder=24, encoder_cross_kv=2, encode=10, encode_kv_copies=0.5, attention_copies=1,
                  cpu_runtime_gb=0.25),
    "mlx": dict(trainable_copies=5, decoder=24, cross_weights=1.5, cross_kv_copies=1, loss_copies=2,
                encoder=24, encoder_cross_kv=2, encode=10, encode_kv_copies=0, attention_copies=1,
                cpu_runtime_gb=0.15),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class TrainingShape:
    """What the peak depends on: the run's options and data as the plan sees them."""

    dims: ModelDimensions
    engine: str  # "mlx" or "torch"
    batch_size: int  # one process's micro-batch
    tokens: int  # decoder positions of the longest training label (prompt included)
    rank: int = 32
    modules: Tuple[str, ...] = ("attn.query", "attn.value", "cross_attn.query", "cross_attn.value")
    num_layers: int = -1
    fine_tune_type: str = "lora"
    train_encoder: bool = False
    cached_utterances: int = 0  # utterances whose encoder states are cached (0: no cache)
    valid_utterances: int = 0
    cache_memory_gb: float = 4.0
    dtype: str = "float32"
    weights_dtype: str = "float32"  # the base weights' (torch keeps float32 and autocasts; MLX loads --dtype)
    bits: Optional[int] = None
    grad_checkpoint: bool = False
    attention_matrices: bool = False  # the trained encoder's self-attention keeps its (F x F) matrices
    rows_per_pass: Optional[int] = None  # with the encoder trained, the engine's step takes this many rows at a time
    on_cpu: bool = True


def parameter_counts(dims: ModelDimensions) -> Tuple[int, int]:
    """(all parameters, those of the blocks' linear layers) of a Whisper of these dims."""
    da, dt = dims.n_audio_state, dims.n_text_state
    enc_block = 12 * da * da + 3 * da + 4 * da + da + 4 * da  # attention, mlp weights and biases, two norms
    dec_block = 16 * dt * dt + 6 * dt + 4 * dt + dt + 6 * dt
    encoder = dims.n_mels * da * 3 + da + 3 * da * da + da + dims.n_audio_layer * enc_block + 2 * da
    decoder = dims.n_vocab * dt + dims.n_text_ctx * dt + dims.n_text_layer * dec_block + 2 * dt
    linear = dims.n_audio_layer * 12 * da * da + dims.n_text_layer * 16 * dt * dt
    return encoder + decoder, linear


def trainable_count(shape: TrainingShape) -> int:
    """Parameters that train: rank x (in + out) per adapted layer (DoRA: + out), or all for full fine-tuning."""
    dims = shape.dims
    if shape.fine_tune_type == "full":
        return parameter_counts(dims)[0]
    stacks = [(dims.n_audio_state, dims.n_audio_layer, False)] if shape.train_encoder else []
    stacks.append((dims.n_text_state, dims.n_text_layer, True))
    total = 0
    for width, layers, cross in stacks:
        blocks = layers if shape.num_layers < 0 else min(layers, shape.num_layers)
        for name in shape.modules:
            if name.startswith("cross_attn") and not cross:
                continue
            inputs, outputs = {"mlp1": (width, 4 * width), "mlp2": (4 * width, width)}.get(name, (width, width))
            total += blocks * (shape.rank * (inputs + outputs) + (outputs if shape.fine_tune_type == "dora" else 0))
    return total


def cross_kv_cacheable(shape: TrainingShape) -> bool:
    """Whether the cross-attention's base keys and values are frozen (LoRA adds to them; DoRA and full do not)."""
    return shape.fine_tune_type == "lora"


def estimate(shape: TrainingShape) -> Dict[str, float]:
    """The device's terms of the training peak, in bytes: weights, trainable, states, step (module docstring)."""
    c = ENGINES[shape.engine]
    dims = shape.dims
    e = DTYPE_BYTES[shape.dtype]
    b, t, f = shape.batch_size, max(1, shape.tokens), dims.n_audio_ctx
    step_rows = min(b, shape.rows_per_pass) if shape.train_encoder and shape.rows_per_pass else b
    da, dt, la, lt = dims.n_audio_state, dims.n_text_state, dims.n_audio_layer, dims.n_text_layer
    total, linear = parameter_counts(dims)
    wbytes = DTYPE_BYTES[shape.weights_dtype]
    weights = total * wbytes if not shape.bits else (total - linear) * wbytes + linear * (shape.bits / 8 + 4 / 64)
    trainable = trainable_count(shape) * 4 * c["trainable_copies"]

    per_utterance = f * da * 4
    extras = lt * 2 * f * dt * e if cross_kv_cacheable(shape) else 0
    cap = shape.cache_memory_gb * GB
    states = 0.0
    cached = not shape.train_encoder and shape.cached_utterances > 0
    if cached:
        states = min(cap, shape.cached_utterances * (per_utterance + extras))
        states += min(cap / 8, shape.valid_utterances * (per_utterance + extras))

    r = step_rows  # the rows one pass of the step holds at a time
    decoder = lt * (c["decoder"] * r * t * dt * e + c["cross_weights"] * r * dims.n_text_head * t * f * 4)
    decoder += c["cross_kv_copies"] * lt * 2 * r * f * dt * e
    loss = c["loss_copies"] * min(r * t, LOSS_ROWS) * dims.n_vocab * 4
    encode = c["encode"] * b * f * da * e + c["encode_kv_copies"] * (extras * b if cached else 0)
    step = decoder + loss
    if shape.train_encoder:
        layer = c["encoder"] * r * f * da * e
        attention = c["attention_copies"] * r * dims.n_audio_head * f * f * 4 if shape.attention_matrices else 0
        kept_layers = 1 if shape.grad_checkpoint else la
        encoder = kept_layers * (layer + attention) + (la * r * f * da * e if shape.grad_checkpoint else 0)
        step += encoder + c["encoder_cross_kv"] * lt * r * f * dt * e
    return {"weights": weights, "trainable": trainable, "states": states, "step": max(step, encode)}


@dataclass
class Plan:
    """An estimate against a limit: `fits`, `refused` (over the limit by more than TOLERANCE), what was chosen."""

    shape: TrainingShape
    terms: Dict[str, float]  # bytes, the device's terms plus, on a CPU, "process" (the rest of the process)
    limit: float  # bytes
    limit_source: str
    batch_size: int  # --batch-size: one micro-step's rows over all processes
    grad_accumulation_steps: int
    chosen: str = ""  # what --batch-size auto chose, in words

    @property
    def estimate(self) -> float:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.estimate <= self.limit

    @property
    def refused(self) -> bool:
        return self.estimate > self.limit * (1 + TOLERANCE)

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GB:.2f}" for name, value in self.terms.items() if value >= 0.005 * GB)
        verdict = "fits" if self.fits else ("over the limit" if self.refused else
                                            f"over the limit by less than the estimate's {TOLERANCE:.0%} tolerance")
        head = f"memory plan: estimated peak {self.estimate / GB:.2f} GB ({parts}) against {self.limit / GB:.2f} GB " \
               f"{self.limit_source}: {verdict}"
        return head + (f"\nmemory plan: {self.chosen}" if self.chosen else "")

    def to_json(self) -> dict:
        return {"estimate_gb": round(self.estimate / GB, 3), "limit_gb": round(self.limit / GB, 3),
                "terms_gb": {k: round(v / GB, 4) for k, v in self.terms.items()},
                "batch_size": self.batch_size, "grad_accumulation_steps": self.grad_accumulation_steps,
                "micro_batch": self.shape.batch_size, "tokens": self.shape.tokens}


def release_free_heap() -> None:
    """glibc's malloc_trim(0): every arena's free pages back to the system (nothing elsewhere). glibc keeps freed
    blocks resident (and the torch engine asks it to, backend_torch/heap.py), so resident memory shows the largest
    step or batch so far: the plan measures after this (loading `--dims small` into the torch engine left 0.8 GB of
    freed buffers resident), and the server runs it after every batch, whose sizes vary with the requests (without
    it its RSS doubled over 10 minutes of load, benchmarks/load_test_server.py)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def process_resident_bytes() -> Optional[int]:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far, an upper bound), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return None


def cpu_available_bytes() -> Tuple[int, str]:
    """(bytes the system can give, where the figure comes from): MemAvailable of /proc/meminfo, else the
    free pages (os.sysconf), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available"
    except (OSError, ValueError):
        pass
    for name, source in (("SC_AVPHYS_PAGES", "free"), ("SC_PHYS_PAGES", "physical")):
        try:
            pages = os.sysconf(name)
            if pages > 0:
                return pages * os.sysconf("SC_PAGE_SIZE"), source
        except (ValueError, OSError, AttributeError):
            continue
    return 16 * GB, "assumed (the system's memory could not be read)"


def cpu_memory() -> Tuple[int, str]:
    """The memory this process can use on the CPU: what the system has available plus what it holds now."""
    available, source = cpu_available_bytes()
    held = process_resident_bytes() or 0
    return available + held, f"of system memory ({source} {available / GB:.2f} + this process's {held / GB:.2f})"


def device_memory(backend) -> Tuple[int, str, bool]:
    """(bytes, description, on a CPU) of the device the back end trains on."""
    if backend.name == "torch":
        from ..backend_torch.device_memory import device_memory as torch_memory

        found = torch_memory(backend)
    else:
        from ..backend_mlx.device_memory import device_memory as mlx_memory

        found = mlx_memory()
    if found is None:
        return (*cpu_memory(), True)
    return (*found, False)


# ---------------------------------------------------------------- the plan and the choice
def plan_for(shape: TrainingShape, limit: float, limit_source: str, global_batch: int, accumulation: int,
             resident: Optional[float]) -> Plan:
    """The plan of one shape: its device terms and, on a CPU, the rest of the process."""
    terms = estimate(shape)
    if shape.on_cpu:
        held = max(0.0, resident - terms["weights"]) if resident is not None else RUNTIME_GB * GB
        terms["process"] = held + ENGINES[shape.engine]["cpu_runtime_gb"] * GB
    return Plan(shape, terms, limit, limit_source, global_batch, accumulation)


def per_process(batch: int, processes: int) -> int:
    return -(-batch // max(1, processes))


def divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def auto_batch(shape: TrainingShape, limit: float, limit_source: str, accumulation: int, processes: int,
               resident: Optional[float], world=None) -> Plan:
    """--batch-size auto: of the batches dividing the global batch (DEFAULT_BATCH x accumulation), the largest
    whose estimate fits, with the accumulation that keeps the global batch; the smallest when none fits. In a
    data-parallel run (`world`: tuner/distributed.py's World) the largest that fits in every process."""
    global_batch = DEFAULT_BATCH * accumulation
    plans = [plan_for(replace(shape, batch_size=per_process(batch, processes)), limit, limit_source, batch,
                      global_batch // batch, resident)
             for batch in [b for b in divisors(global_batch) if b % processes == 0] or [global_batch]]
    fits = [plan.fits for plan in plans]
    if world is not None and world.parallel:
        counts = world.sum(np.array(fits, dtype=np.int32))
        fits = [int(count) == world.size for count in counts]
    best = plans[0]
    for plan, fit in zip(plans, fits):
        if fit:
            best = plan
    best.chosen = (f"--batch-size auto chose {best.batch_size} with --grad-accumulation-steps "
                   f"{best.grad_accumulation_steps} (a global batch of {global_batch})")
    if not best.fits:
        best.chosen += ", the smallest there is; it does not fit either"
    return best


def fitting_flags(plan: Plan, processes: int, resident: Optional[float], bf16: bool, bits_ok: bool) -> List[str]:
    """Flag sets that would fit, each estimated as `plan` was: a smaller batch with more accumulation (the same
    global batch), --grad-checkpoint, --bits 8, --dtype bfloat16, a smaller --cache-memory-gb, then combinations."""
    shape, global_batch = plan.shape, plan.batch_size * plan.grad_accumulation_steps

    def fits(**changes) -> Optional[Plan]:
        batch = changes.pop("global_step_batch", plan.batch_size)
        candidate = plan_for(replace(shape, batch_size=per_process(batch, processes), **changes), plan.limit,
                             plan.limit_source, batch, global_batch // batch, resident)
        return candidate if candidate.fits else None

    out = []
    smaller = [b for b in divisors(global_batch) if b < plan.batch_size]
    for batch in reversed(smaller):
        if fits(global_step_batch=batch):
            out.append(f"--batch-size {batch} --grad-accumulation-steps {global_batch // batch}")
            break
    options = []
    if not shape.grad_checkpoint and shape.train_encoder:
        options.append(("--grad-checkpoint", dict(grad_checkpoint=True, attention_matrices=False)))
    if not shape.bits and bits_ok:
        options.append(("--bits 8", dict(bits=8)))
    if shape.dtype == "float32" and bf16:
        weights = "bfloat16" if shape.engine == "mlx" else shape.weights_dtype
        options.append(("--dtype bfloat16", dict(dtype="bfloat16", weights_dtype=weights)))
    if plan.terms.get("states", 0) > GB / 4:
        half = max(0.25, round(shape.cache_memory_gb / 4, 2))
        options.append((f"--cache-memory-gb {half:g}", dict(cache_memory_gb=half)))
    for flag, changes in options:
        if fits(**changes):
            out.append(flag)
    if out:
        return out
    together = {k: v for _, changes in options for k, v in changes.items()}
    flags = " ".join(flag for flag, _ in options)
    for batch in reversed(divisors(global_batch)):
        if fits(global_step_batch=batch, **together):
            return [f"{flags} --batch-size {batch} --grad-accumulation-steps {global_batch // batch}".strip()]
    return []


def refusal(plan: Plan, flags: List[str]) -> str:
    """The UserError's text: the estimate, the limit, and what would fit."""
    text = (f"training would need about {plan.estimate / GB:.2f} GB at --batch-size {plan.batch_size} "
            f"(the memory plan's estimate) but {plan.limit / GB:.2f} GB {plan.limit_source} are there")
    if flags:
        return text + "; these would fit: " + "; or ".join(flags) + " (--batch-size auto picks the batch itself)"
    return text + ("; nothing the plan knows fits: a smaller model, --lora-modules on fewer layers, or a machine with "
                   "more memory")


def make_plan(shape: TrainingShape, limit: float, limit_source: str, batch_option, accumulation: int,
              processes: int = 1, resident: Optional[float] = None, bf16: bool = True, bits_ok: bool = True,
              log: Callable[[str], None] = print, world=None) -> Plan:
    """The plan of a run, logged; raises UserError when it is refused (in a data-parallel run, `world`, in
    every process when in one). `batch_option`: --batch-size (an integer, or "auto"); `shape.batch_size` is
    then set from it."""
    from ..errors import UserError

    if batch_option == "auto":
        plan = auto_batch(shape, limit, limit_source, accumulation, processes, resident, world)
    else:
        batch = int(batch_option)
        plan = plan_for(replace(shape, batch_size=per_process(batch, processes)), limit, limit_source, batch,
                        accumulation, resident)
    log(plan.line())
    refused = plan.refused
    if world is not None and world.parallel:
        refused = not world.all_agree(not refused)
    if refused and not plan.refused:
        raise UserError("another process's memory plan refused the run (its message says what would fit)")
    if refused:
        raise UserError(refusal(plan, fitting_flags(plan, processes, resident, bf16, bits_ok)))
    if not plan.fits:
        log("warning: the estimate is above the memory there is, within its tolerance; training starts, and may "
            "swap or run out of memory")
    return plan


# ---------------------------------------------------------------- a run's plan
def run_shape(backend, config, tokens: int, cached: int, valid: int, on_cpu: bool) -> TrainingShape:
    """The shape of a `lora` run (`config`: tuner.run_config.RunConfig) on its opened back end, adapters applied."""
    dtype = str(config.dtype)
    if backend.name == "torch" and dtype == "float16" and on_cpu:
        dtype = "float32"  # the torch engine trains fp16 on CUDA only
    return TrainingShape(
        dims=backend.model.dims, engine=backend.name, batch_size=1, tokens=int(tokens), rank=int(config.rank),
        modules=tuple(parse_modules(config.lora_modules)), num_layers=int(config.num_layers),
        fine_tune_type=str(config.fine_tune_type), train_encoder=bool(backend.encoder_trained),
        cached_utterances=int(cached), valid_utterances=int(valid), cache_memory_gb=float(config.cache_memory_gb),
        dtype=dtype, weights_dtype=dtype if backend.name == "mlx" else "float32",
        bits=int(config.bits) if config.bits else None, grad_checkpoint=bool(config.grad_checkpoint),
        attention_matrices=attention_matrices(backend, config, on_cpu), rows_per_pass=rows_per_pass(backend),
        on_cpu=on_cpu)


def rows_per_pass(backend) -> Optional[int]:
    """The rows a training encoder's step takes at a time: the MLX engine's ENCODER_ROWS_PER_PASS (None: the
    whole batch, as the torch engine does)."""
    if backend.name != "mlx":
        return None
    from ..backend_mlx import engine

    return getattr(engine, "ENCODER_ROWS_PER_PASS", None)


def attention_matrices(backend, config, on_cpu: bool) -> bool:
    """Whether the trained encoder's self-attention keeps its (frames x frames) matrices: MLX on a CPU without
    --grad-checkpoint (backend_mlx/engine.py's start_training: blockwise attention otherwise); torch where its
    engine picks the bf16 products that keep them (TorchBackend.keeps_attention_weights)."""
    if backend.name == "mlx":
        return on_cpu and not config.grad_checkpoint
    keeps = getattr(backend, "keeps_attention_weights", None)
    batch = DEFAULT_BATCH if config.batch_size == "auto" else int(config.batch_size)
    return bool(keeps(batch, bool(config.grad_checkpoint))) if keeps is not None else False


def settle(backend, config, longest_tokens: int, cached: int, valid: int, log: Callable[[str], None] = print):
    """(config with --batch-size and --grad-accumulation-steps settled, the plan): the plan of the run, logged;
    a UserError naming what would fit when it is refused."""
    from .distributed import world_of

    limit, source, on_cpu = device_memory(backend)
    if config.max_memory_gb is not None and float(config.max_memory_gb) * GB < limit:
        limit, source = float(config.max_memory_gb) * GB, "(--max-memory-gb)"
    shape = run_shape(backend, config, longest_tokens, cached, valid, on_cpu)
    if on_cpu:
        release_free_heap()
    resident = process_resident_bytes() if on_cpu else None
    bf16 = backend.name == "torch" or not on_cpu
    bits_ok = backend.name == "mlx" or getattr(backend, "device", "cpu") == "cuda"
    world = world_of(backend)
    plan = make_plan(shape, limit, source, config.batch_size, int(config.grad_accumulation_steps), world.size,
                     resident, bf16, bits_ok, log, world)
    return replace(config, batch_size=plan.batch_size, grad_accumulation_steps=plan.grad_accumulation_steps), plan
