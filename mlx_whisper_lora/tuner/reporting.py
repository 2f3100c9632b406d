"""Training you can watch: metrics sent to TensorBoard or Weights & Biases as they are logged, and PNG
plots of the curves and test scores written beside the adapters.

Everything goes through the maintained packages (tensorboardX writes TensorBoard's event files without
TensorFlow or PyTorch; wandb; matplotlib for the plots); this module only maps our metrics.jsonl
entries onto their calls. metrics.jsonl stays the record of the run either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import UserError

REPORT_TO = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "runs"  # tensorboard --logdir ADAPTER_PATH/runs
CURVES_PLOT = "training_curves.png"
TEST_PLOT = "test_scores.png"

# metrics.jsonl key -> the chart it goes to
TAGS = {"train_loss": "train/loss", "val_loss": "val/loss", "learning_rate": "train/learning_rate",
        "iterations_per_second": "train/iterations_per_second", "audio_seconds_per_second": "train/audio_seconds_per_second",
        "peak_memory_gb": "train/peak_memory_gb", "wer": "test/wer", "cer": "test/cer",
        "normalized_wer": "test/normalized_wer", "normalized_cer": "test/normalized_cer", "test_loss": "test/loss"}


def parse_report_to(values: Sequence[str]) -> List[str]:
    """`--report-to tensorboard wandb` (or comma-separated, or `none`; YAML may give one string) as a checked list."""
    if isinstance(values, str):
        values = [values]
    names = [v.strip().lower() for value in values or () for v in str(value).split(",") if v.strip()]
    for name in names:
        if name not in REPORT_TO:
            raise UserError(f"--report-to {name!r}: use tensorboard, wandb or none")
    return [] if "none" in names else list(dict.fromkeys(names))


class Reporter:
    """Sends each metrics entry ({"step": n, key: value, ...}) to the chosen trackers."""

    def __init__(self, targets: Sequence[str], folder: Path, run_config: Optional[dict] = None,
                 log: Callable[[str], None] = print):
        self.sinks: List[Callable[[int, Dict[str, float]], None]] = []
        self.closers: List[Callable[[], None]] = []
        folder = Path(folder)
        if "tensorboard" in targets:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise UserError("--report-to tensorboard needs tensorboardX: pip install 'mlx-whisper-lora[report]'") from None
            writer = SummaryWriter(logdir=str(folder / TENSORBOARD_DIR))
            self.sinks.append(lambda step, values: [writer.add_scalar(TAGS.get(k, k), v, step) for k, v in values.items()])
            self.closers.append(writer.close)
            log(f"TensorBoard logs in {folder / TENSORBOARD_DIR} (tensorboard --logdir {folder / TENSORBOARD_DIR})")
        if "wandb" in targets:
            try:
                import wandb
            except ImportError:
                raise UserError("--report-to wandb needs wandb: pip install wandb (and `wandb login`, or WANDB_MODE=offline)") from None
            run = wandb.init(project="mlx-whisper-lora", dir=str(folder), config=run_config or {}, reinit=True)
            self.sinks.append(lambda step, values: run.log({TAGS.get(k, k): v for k, v in values.items()}, step=step))
            self.closers.append(run.finish)

    def __call__(self, entry: dict) -> None:
        step = int(entry.get("step", 0))
        values = {k: float(v) for k, v in entry.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink(step, values)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers = []


def read_metrics(path: Path) -> List[dict]:
    entries = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a full disk
                continue
    return entries


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_training_curves(metrics_path: Path, out: Path) -> Optional[Path]:
    """Train and validation loss against the step, learning rate beneath; None when matplotlib is
    missing or there is nothing to draw."""
    plt = _pyplot()
    entries = read_metrics(metrics_path)
    train = [(e["step"], e["train_loss"]) for e in entries if "train_loss" in e]
    val = [(e["step"], e["val_loss"]) for e in entries if "val_loss" in e]
    lr = [(e["step"], e["learning_rate"]) for e in entries if "learning_rate" in e]
    if plt is None or not (train or val):
        return None
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        ax.plot(*zip(*train), label="train loss", color="#2457c5")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#d9822b")
    ax.set_ylabel("loss (per target token)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"Training: {Path(metrics_path).parent.name}")
    if lr:
        ax_lr.plot(*zip(*lr), color="#555")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_test_scores(reports: Dict[str, dict], out: Path) -> Optional[Path]:
    """WER and CER (raw and normalized) of each model in `reports` ({label: test report}) as bars."""
    plt = _pyplot()
    if plt is None or not reports:
        return None
    keys = [("wer", "WER raw"), ("normalized_wer", "WER normalized"), ("cer", "CER raw"), ("normalized_cer", "CER normalized")]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(reports)
    colors = ["#8894a0", "#2457c5", "#d9822b", "#3a9d5d"]
    for i, (label, report) in enumerate(reports.items()):
        xs = [k + (i - (len(reports) - 1) / 2) * width for k in range(len(keys))]
        values = [float(report.get(key, 0.0)) for key, _ in keys]
        bars = ax.bar(xs, values, width, label=label, color=colors[i % len(colors)])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(keys)), [name for _, name in keys])
    ax.set_ylabel("%")
    ax.set_title("Test scores (lower is better)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
