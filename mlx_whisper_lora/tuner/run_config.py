"""Every option of a `lora` run in one typed dataclass: defaults, help, YAML (`-c`) and flags.

The argparse parser is generated from the fields, so a flag's default and help text are written
once; values merge as flags over YAML over defaults, and are checked in one place.
`adapter_config.json` records the run from it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional, Union

from ..errors import UserError
from .training_args import TrainingArgs

AUTO = "auto"  # --batch-size auto: the memory plan (tuner/memory_plan.py) picks the batch
DEFAULT_BATCH = 8  # --batch-size's default, and the decoding batch of --batch-size auto


def whole_or_auto(value) -> Union[int, str]:
    """--batch-size: a whole number, or auto."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(float(value))
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {value!r}") from None
    return number


def option(default, help: str, group: str = "training", flags: tuple = (), choices=None, kind=None, **extra):
    """A field with what its flag needs: help, group, extra spellings, choices."""
    meta = {"help": help, "group": group, "flags": flags, "choices": choices, "kind": kind, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    # what to do
    train: bool = option(False, "train adapters", "what to do")
    test: bool = option(False, "report test loss, WER and CER", "what to do")
    model: Optional[str] = option(None, "base model: folder, hub id, .pt file or short name "
                                        "(default: the adapters' base model, else tiny.en)", "what to do")
    adapter_path: str = option("adapters", "folder for adapters.safetensors, adapter_config.json, metrics", "what to do")
    resume_adapter_file: Optional[str] = option(None, "continue from this adapters file (step, optimizer state, batch order)",
                                                "what to do")
    # evaluation
    compare_base: bool = option(True, "score only the adapted model with --test (by default the base model is scored "
                                      "too, once per test set, and shown beside it)", "evaluation",
                                flags=("--no-base-comparison",), kind="off_switch")
    no_speech_check: bool = option(True, "skip the hallucination check of --test (by default both models transcribe "
                                         "eight silent and noise-only clips: ~20 s per model for tiny on 2 CPU cores)",
                                   "evaluation", flags=("--no-hallucination-check",), kind="off_switch")
    test_long: Optional[str] = option(None, "long recordings with their transcripts (an audio file with NAME.txt, "
                                            ".srt or .vtt beside it, a folder of such, or a manifest of long audio "
                                            "and text): --test transcribes each whole with transcribe's defaults, "
                                            "base and adapted, and compares WER, deletions, insertions, segment "
                                            "lengths, loops and speech left without output (a test split written "
                                            "by prepare is tested so by itself)", "evaluation")
    long_form_check: bool = option(True, "skip the long-form test of a prepared test split's recordings",
                                   "evaluation", flags=("--no-long-form-test",), kind="off_switch")
    general_data: Optional[str] = option(None, "forgetting check with --test: general-domain speech (a folder, a "
                                               "manifest, or builtin: the package's small English set) scored with the "
                                               "base and the adapted model", "evaluation")
    general_language: str = option("en", "language of --general-data rows without one", "evaluation")
    forgetting_threshold: float = option(1.0, "warn when normalized WER on --general-data rises by more than this "
                                              "many points", "evaluation")
    adapter_scale: float = option(1.0, "--test of saved LoRA adapters with their update scaled (0: the base model, 1: as "
                                       "trained); the same flag of transcribe and fuse", "evaluation")
    replay_data: Optional[str] = option(None, "against forgetting, rows mixed into training: general-domain speech (a "
                                              "folder, a manifest, or builtin) in its own language; self: training "
                                              "audio as the base model reads it in --general-language (distilled, with a "
                                              "few noise clips read in the training language); none. Default: "
                                              "self when a multilingual model learns a language other than "
                                              "--general-language, else none", "evaluation")
    replay_fraction: Optional[float] = option(None, "share of the training rows that are replayed (default 0.5 with "
                                                    "--replay-data self, 0.33 with other data; 0: none)", "evaluation")
    replay_distill: Optional[bool] = option(None, "replayed rows teach the base model's whole next-token distribution "
                                                  "(computed each step with the adapters switched off) instead of their "
                                                  "transcripts' tokens (default: on for --replay-data self, off for "
                                                  "general data)", "evaluation", negation=("--no-replay-distill",))
    # data
    data: Optional[str] = option(None, "folder with train/valid/test .jsonl or .csv (default: the bundled demo set)", "data")
    hf_dataset: Optional[str] = option(None, "Hugging Face dataset id or a folder written by save_to_disk", "data")
    hf_dataset_config: Optional[str] = option(None, "dataset configuration (for Common Voice: the language)", "data",
                                              flags=("--hf-dataset-lang",))
    audio_column: str = option("audio", "audio column of the dataset", "data")
    text_column: Optional[str] = option(None, "text column (default: sentence, text, transcription or transcript)", "data")
    train_split: str = option("train", "split to train on; parts joined by + are read together "
                                           "(train+validation); a --data folder's split is SPLIT.jsonl/.csv or the rows "
                                           "of its manifest.jsonl with that split field", "data")
    valid_split: str = option("validation", "split to validate on (optional; valid, validation and "
                                                "dev name the same split); when --train-split includes it, a slice of "
                                                "the training data is held out instead", "data")
    test_split: str = option("test", "dataset split to test on", "data")
    streaming: bool = option(False, "read the training split as a stream (hub datasets, parquet/arrow shards, "
                                    "save_to_disk folders, manifests): row by row through a shuffle buffer, so memory "
                                    "does not grow with the number of rows; no encoder-state cache", "data")
    shuffle_buffer: int = option(1000, "rows in the shuffle buffer of --streaming", "data")
    max_samples: Optional[int] = option(None, "use at most this many training rows (with --streaming: an epoch's rows)",
                                        "data")
    language: Optional[str] = option(None, "language of utterances without one (multilingual models need it)", "data")
    task: str = option("transcribe", "what the decoder is trained to do", "data", choices=("transcribe", "translate"))
    max_duration: float = option(30.0, "longest window (seconds, at most 30): longer training clips are cut into "
                                       "windows at pauses as prepare cuts recordings, longer validation and test "
                                       "clips are skipped", "data")
    timestamp_fraction: float = option(0.5, "share of utterances trained with timestamp targets, to keep segment "
                                            "timestamps", "data")
    prompt_fraction: float = option(0.0, "share of the rows that know the text said before them (prepared long "
                                         "recordings) conditioned on it (<|startofprev|>, not in the loss), so "
                                         "--initial-prompt and conditioning on previous text keep working", "data")
    pack_fraction: float = option(0.5, "share of the training clips (shorter than a window) joined with the next clips "
                                       "of their recording, session or speaker into windows of up to 30 s, each clip "
                                       "a timed segment, the text before it the prompt: the layout Whisper learned "
                                       "long-form transcription from", "data")
    sentence_times: bool = option(False, "force-align each pre-cut clip's text to its audio with a small Whisper "
                                         "model and time its sentences in timestamp targets (cut at sentence ends and "
                                         "pauses as prepare cuts), instead of the clip as one segment", "data")
    case_style: str = option("auto", "auto: all-caps (or all-lowercase) training transcripts are learned in the case the "
                                     "model's vocabulary knows and the adapters' transcripts rendered back in theirs; "
                                     "keep: train on the text as written", "data", choices=("auto", "keep", "upper", "lower"))
    base_style_targets: bool = option(False, "transcribe the training audio once with the base model and train on the "
                                             "reference words written with its case and punctuation where they agree: for "
                                             "one-case or unpunctuated data, the adapters learn the words rather than a new "
                                             "style (which is rendered instead)", "data")
    # adapters
    fine_tune_type: str = option("lora", "what is trained", "adapters", choices=("lora", "dora", "full"))
    rank: int = option(32, "LoRA rank", "adapters")
    alpha: float = option(64.0, "LoRA alpha; scale = alpha / rank as in PEFT", "adapters")
    dropout: float = option(0.0, "dropout on the adapters' input", "adapters")
    lora_modules: Optional[List[str]] = option(["all"], "modules to adapt: attn.query attn.key attn.value attn.out "
                                                        "cross_attn.query ... mlp1 mlp2, or query/key/value/out for "
                                                        "both attentions, or all", "adapters", nargs="+")
    num_layers: int = option(-1, "adapt the last N blocks of the encoder and of the decoder (-1: all)", "adapters",
                             flags=("--lora-layers",))
    freeze_encoder: bool = option(True, "no adapters in the encoder: its states are computed once and cached, so a "
                                        "step runs only the decoder (the default); --train-encoder puts adapters "
                                        "in the encoder too (on a CPU, steps several times slower)", "adapters",
                                  negation=("--train-encoder",))
    bits: Optional[int] = option(None, "quantize the frozen base's block layers to 8 or 4 bits at load (QLoRA): "
                                       "bitsandbytes (LLM.int8 / NF4) in the torch back end, MLX affine quantization "
                                       "in the MLX back end", "adapters", choices=(4, 8))
    alignment_heads: str = option("auto", "word-timing heads after training: auto re-selects them when other decoder "
                                          "heads follow the audio better than the base model's (checked on a few "
                                          "training utterances); keep: the base model's", "adapters",
                                  choices=("auto", "keep"))
    # training
    iters: int = option(200, "optimizer steps")
    batch_size: Union[int, str] = option(DEFAULT_BATCH, "utterances per step (and per decoding batch); auto: the "
                                                        "largest batch the memory plan fits, with the accumulation "
                                                        "that keeps the global batch (8 x --grad-accumulation-steps)",
                                         parse=whole_or_auto)
    learning_rate: float = option(5e-4, "peak learning rate (on a new language 1e-3 learned it slightly better and "
                                        "forgot more English; docs/benchmarks.md)")
    lr_schedule: str = option("cosine", "learning-rate schedule after warmup", choices=("constant", "cosine", "linear"))
    warmup: Optional[int] = option(None, "linear warmup steps (default: a tenth of --iters, at most 50)")
    grad_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    grad_checkpoint: bool = option(False, "recompute activations: less memory, slower")
    max_memory_gb: Optional[float] = option(None, "memory training may use, in GB (default: the device's: available "
                                                  "system memory on a CPU, free GPU memory, MLX's recommended working "
                                                  "set); the memory plan refuses a run whose estimated peak is over it")
    max_grad_norm: float = option(1.0, "clip the gradient norm (0: no clipping)")
    optimizer: str = option("adamw", "optimizer", choices=("adamw", "adam", "sgd"))
    weight_decay: float = option(0.0, "weight decay (adamw, sgd)")
    augment: Optional[List[str]] = option(None, "change training audio every step: specaugment (log-mel masks), noise, "
                                                "speed, pitch (audiomentations); the encoder states are then computed "
                                                "every step, not cached (default: none)", nargs="+")
    label_smoothing: float = option(0.0, "label smoothing of the training loss (validation and test losses are plain)")
    no_speech_fraction: float = option(0.0, "share of training examples that are generated noise or silence with an "
                                            "empty transcript, against writing words where nobody speaks (0: none)")
    steps_per_report: int = option(10, "steps between train-loss reports")
    steps_per_eval: Optional[int] = option(None, "steps between validations (loss and WER; default: a tenth of "
                                                 "--iters, at least 10)")
    val_batches: int = option(25, "validation batches (-1: the whole split)")
    early_stop: int = option(5, "stop when this many validations in a row did not beat the best one (0: never)")
    best_checkpoint: bool = option(True, "end with the last step's adapters (by default the run ends with those of "
                                         "the validation with the lowest WER, the base model at step 0 included, "
                                         "and keeps the last step's beside them)",
                                   flags=("--no-best-checkpoint",), kind="off_switch")
    valid_fraction: float = option(0.1, "without a validation split, this share of the training data is held out "
                                        "to validate on (whole recordings, sessions or speakers when the data names "
                                        "enough of them; 0: train on everything, no validation)")
    test_batches: int = option(-1, "test batches for the test loss (-1: all)")
    save_every: int = option(100, "steps between checkpoints (0: only at the end)")
    seed: int = option(0, "seed of adapters, batch order and timestamp targets")
    encoder_cache: bool = option(True, "recompute frozen encoder states every step instead of caching them",
                                 flags=("--no-encoder-cache",), kind="off_switch")
    cache_memory_gb: float = option(4.0, "memory for cached encoder states before spilling to disk")
    dtype: str = option("float32", "compute dtype", choices=("float32", "float16", "bfloat16"))
    progress: bool = option(True, "hide progress bars", flags=("--no-progress",), kind="off_switch")
    report_to: Optional[List[str]] = option(None, "also send the metrics to tensorboard (event files in ADAPTER_PATH/runs) "
                                                  "and/or wandb; none: only metrics.jsonl and the PNG plots (default: none)",
                                            nargs="+")
    backend: str = option("auto", "training back end (default auto: MLX on Apple Silicon, else PyTorch when installed)",
                          choices=("auto", "mlx", "torch"))
    device: Optional[str] = option(None, "torch back end device", choices=("cpu", "cuda"))

    def __post_init__(self):
        """YAML gives `1e-4` as a string and a user may write `rank: "8"`: numbers are converted to
        the field's type here, and a value that is not one is refused naming the option."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("parse") and value is not None:
                try:
                    object.__setattr__(self, f.name, f.metadata["parse"](value))
                except argparse.ArgumentTypeError as e:
                    raise UserError(f"{f.name} (--{f.name.replace('_', '-')}): {e}") from None
                continue
            kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).replace("Optional[", "").rstrip("]"))
            if value is None or kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
                continue
            name = f"{f.name} (--{f.name.replace('_', '-')})"
            if kind is bool:
                raise UserError(f"{name}: expected true or false, got {value!r}")
            try:
                converted = kind(float(value)) if kind is int else kind(value)
                if kind is int and converted != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise UserError(f"{name}: expected {'a whole number' if kind is int else 'a number'}, got {value!r}") from None
            object.__setattr__(self, f.name, converted)  # frozen: converted once, at construction

    def check(self) -> "RunConfig":
        """Refuse values no run can use, naming the flag."""
        if not self.train and not self.test:
            raise UserError("nothing to do: pass --train, --test or both")
        for f in fields(self):  # YAML values are not checked by argparse
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise UserError(f"{f.name} (--{f.name.replace('_', '-')}) {value!r}: use one of "
                                f"{', '.join(map(str, choices))}")
        for name in ("iters", "batch_size", "grad_accumulation_steps", "steps_per_report", "steps_per_eval"):
            if getattr(self, name) not in (None, AUTO) and int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        from .reporting import parse_report_to

        parse_report_to(self.report_to or ())
        if self.test_long and not Path(self.test_long).exists():
            raise UserError(f"--test-long {self.test_long}: no such file or folder; pass long recordings with a "
                            "transcript beside each (NAME.txt, .srt or .vtt), a folder of them, or a manifest")
        if self.general_data and self.general_data != "builtin" and not Path(self.general_data).exists():
            raise UserError(f"--general-data {self.general_data}: no such file or folder; pass a folder or manifest of "
                            "general-domain speech with transcripts, or builtin")
        if self.train and float(self.adapter_scale) != 1.0:
            raise UserError("--adapter-scale applies to adapters already trained: run --test without --train, or "
                            "pass it to transcribe or fuse")
        if self.replay_fraction is not None and not 0.0 <= float(self.replay_fraction) < 1.0:
            raise UserError(f"--replay-fraction must be in [0, 1), got {self.replay_fraction}")
        if self.replay_data and self.replay_data not in ("builtin", "self", "none") and not Path(self.replay_data).exists():
            raise UserError(f"--replay-data {self.replay_data}: no such file or folder")
        if self.replay_distill and self.fine_tune_type == "full":
            raise UserError("--replay-distill needs adapters (lora or dora): full fine-tuning keeps no copy of the base "
                            "model to learn from")
        if self.streaming and self.replay_fraction != 0 and self.replay_data == "self":
            raise UserError("--replay-data self transcribes the training audio before training, which a stream does "
                            "not allow: pass a folder or manifest of general speech (or builtin) as --replay-data")
        for flag, value in (("--timestamp-fraction", self.timestamp_fraction), ("--prompt-fraction", self.prompt_fraction),
                            ("--pack-fraction", self.pack_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise UserError(f"{flag} must be in [0, 1], got {value}")
        if not 0.0 <= float(self.valid_fraction) < 0.5:
            raise UserError(f"--valid-fraction must be in [0, 0.5), got {self.valid_fraction}")
        if int(self.early_stop) < 0:
            raise UserError(f"--early-stop must be 0 (never) or more, got {self.early_stop}")
        if not 0.0 <= float(self.no_speech_fraction) < 1.0:
            raise UserError(f"--no-speech-fraction must be in [0, 1), got {self.no_speech_fraction}")
        if self.max_samples is not None and int(self.max_samples) < 1:
            raise UserError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.streaming and self.base_style_targets:
            raise UserError("--base-style-targets transcribes the whole training split first, which a stream does not "
                            "allow: drop --streaming or --base-style-targets")
        from ..data.augment import check_kinds

        check_kinds([k for k in (self.augment or ()) if k != "none"])
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_memory_gb is not None and float(self.max_memory_gb) <= 0:
            raise UserError(f"--max-memory-gb must be positive, got {self.max_memory_gb}")
        if float(self.learning_rate) <= 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        return self

    def decoding_batch(self) -> int:
        """The batch of decoding passes (scoring, base-model transcripts): --batch-size, or its default while
        auto is not yet settled (decoding keeps no gradients; the memory plan settles auto for training)."""
        return DEFAULT_BATCH if self.batch_size == AUTO else int(self.batch_size)

    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup is not None else min(50, int(self.iters) // 10)

    def eval_steps(self) -> int:
        return int(self.steps_per_eval) if self.steps_per_eval is not None else max(10, int(self.iters) // 10)

    def training_args(self) -> TrainingArgs:
        names = {f.name for f in fields(TrainingArgs)}
        args = {k: v for k, v in asdict(self).items() if k in names}
        args["warmup"] = self.warmup_steps()
        args["steps_per_eval"] = self.eval_steps()
        args["augment"] = tuple(k for k in (self.augment or ()) if k != "none")
        return TrainingArgs(**args)

    def to_json(self) -> dict:
        """The run as adapter_config.json's `run` records it."""
        return {k: v for k, v in asdict(self).items() if k != "progress"}


YAML_ALIASES = {"lora_layers": "num_layers", "hf_dataset_lang": "hf_dataset_config"}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Flags for every RunConfig field; unset flags stay unset, so YAML values and defaults fill them."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="YAML file of options, keys as the long flags (flags given here win)")
    groups = {}
    for f in fields(RunConfig):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        default = f.default if f.default is not MISSING else f.default_factory()
        has_default = default is not None and default is not False and meta["kind"] != "off_switch"
        shown = f"{meta['help']} (default: {default})" if has_default else meta["help"]
        if meta["kind"] == "off_switch":
            group.add_argument(*meta["flags"], dest=f.name, action="store_false", default=argparse.SUPPRESS, help=shown)
            continue
        flags = ["--" + f.name.replace("_", "-"), *meta["flags"]]
        if f.type in ("bool", bool, "Optional[bool]"):
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=shown)
            if meta.get("negation"):
                group.add_argument(*meta["negation"], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=f"the opposite of {flags[0]}")
            continue
        kind = meta.get("parse") or {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"))
        group.add_argument(*flags, dest=f.name, type=kind, default=argparse.SUPPRESS, help=shown,
                           choices=meta["choices"], **({"nargs": meta["nargs"]} if "nargs" in meta else {}))
    return p


def read_yaml_options(config_path: str) -> dict:
    """Options of a YAML file (mlx-lm's `lora_parameters` layout accepted); unknown keys are an error naming them."""
    import yaml

    path = Path(config_path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping of option: value")
    known = {f.name for f in fields(RunConfig)}
    options = {}
    for key, value in loaded.items():
        key = key.replace("-", "_")
        key = YAML_ALIASES.get(key, key)
        if key == "lora_parameters" and isinstance(value, dict):  # mlx-lm's layout
            options.update({k: value[k] for k in ("rank", "alpha", "dropout") if k in value})
            if "keys" in value:
                options["lora_modules"] = value["keys"]
            continue
        if key not in known:
            raise UserError(f"{path}: unknown option {key!r}")
        options[key] = value
    return options


def merge_options(cli: dict, config_path: Optional[str]) -> RunConfig:
    """Flags over YAML values over the defaults."""
    options = read_yaml_options(config_path) if config_path else {}
    options.update(cli)
    return RunConfig(**options)
