"""--augment: SpecAugment masks and waveform changes (audiomentations) on training batches only,
repeatable from the seed, with the encoder-state cache off while they apply."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_whisper_lora.data.augment import Augmenter
from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.lora import main


def test_specaugment_masks_bands_within_the_speech_and_repeats_from_the_seed():
    mel = np.random.default_rng(0).normal(size=(3000, 80)).astype(np.float32)
    a, b = Augmenter(["specaugment"], seed=3), Augmenter(["specaugment"], seed=3)
    first, again = a.mel(mel, 500), b.mel(mel, 500)
    assert np.array_equal(first, again) and not np.array_equal(first, mel)
    changed_frames = np.where((first != mel).all(axis=1))[0]
    assert changed_frames.size == 0 or changed_frames.max() < 500  # time masks stay within the speech
    assert (first != mel).all(axis=0).sum() <= 2 * 27  # at most two frequency bands of up to 27 bins
    assert not np.array_equal(a.mel(mel, 500), first)  # a new draw every time


def test_waveform_changes_and_bad_kinds():
    pytest.importorskip("audiomentations")
    audio = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    outs = [Augmenter(["noise", "speed", "pitch"], seed=1).waveform(audio) for _ in range(2)]
    assert np.array_equal(outs[0], outs[1])
    with pytest.raises(UserError, match="--augment reverb"):
        Augmenter(["reverb"])


@pytest.mark.slow  # a training without an encoder cache; RUN_SLOW=1 runs it
def test_training_with_augmentation(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "adapters"
    main(["--train", "--augment", "specaugment", "noise", "--iters", "2", "--batch-size", "4", "--backend", "torch",
          "--steps-per-report", "1", "--adapter-path", str(out), "--no-progress", "--alignment-heads", "keep"])
    assert "computed every step instead of cached" in capsys.readouterr().err
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["run"]["augment"] == ["specaugment", "noise"]
