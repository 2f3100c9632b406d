"""Which replay a training run gets (`--replay-data`, `--replay-fraction`, `--replay-distill`), settled
once the model is known.

Why a default: adapters trained on one new language change the decoder under every language token.
Measured on Yoruba (docs/benchmarks.md): English WER on held-out LibriSpeech rose 3.9% -> 22.1% with
no replay. Replaying a third of the training audio as the base model reads it in English, with the
base model's whole next-token distribution as the target, kept English within 1.3 and 1.6 points (two
runs at lr 1e-3; 0.27, 0.44 and 1.15 in three at the default 5e-4) and cost the Yoruba result little;
half of each batch, +0.17 where a third gave +1.15 from the same seed, Yoruba no worse. It
needs no data beyond the user's, so a multilingual model learning a language other than
`--general-language` gets it unless told `--replay-data none`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import UserError
from ..tuner.run_config import RunConfig
from .self_replay import SELF, adds_noise_rows

NONE = "none"
DEFAULT_FRACTION = 0.33  # general-domain replay data (a folder, a manifest, builtin)
# the guard's (--replay-data self) half of each batch: on Yoruba, English +0.17 where a third gave +1.15
# from the same seed, and the Yoruba result a little better (docs/benchmarks.md)
SELF_DEFAULT_FRACTION = 0.5


def guards_by_default(config: RunConfig, multilingual: bool) -> bool:
    """A run that learns a new language: a multilingual model, a language other than the general one,
    data that can be transcribed before training (not a stream), and adapters to switch off."""
    return bool(config.train and multilingual and config.language and config.language != config.general_language
                and not config.streaming and config.fine_tune_type != "full")


def settle_replay(config: RunConfig, multilingual: bool, log: Callable) -> RunConfig:
    """`config` with concrete replay options: the data (None: no replay), the share and the loss."""
    data = config.replay_data
    guard = data is None and config.replay_fraction != 0 and guards_by_default(config, multilingual)
    if guard:
        data = SELF
    if data == NONE:
        data = None
    default = SELF_DEFAULT_FRACTION if data == SELF else DEFAULT_FRACTION
    fraction = default if config.replay_fraction is None else float(config.replay_fraction)
    if guard:
        log(f"forgetting guard: {100 * fraction:g}% of the training rows replay "
            f"the training audio as the base model reads it in {config.general_language}, learning its next-token "
            f"distribution there, so decoding in {config.general_language} stays as it was"
            + (f"; noise clips, read the same way in {config.language}, keep its doubt where nobody speaks"
               if adds_noise_rows(config) else "") + " (--replay-data none to turn it off)")
    if data is None:
        if config.replay_fraction:
            raise UserError("--replay-fraction needs --replay-data (a folder or manifest of general speech, builtin, "
                            "or self)")
        fraction = 0.0
    if fraction == 0.0:
        data = None
    distill = data == SELF if config.replay_distill is None else bool(config.replay_distill)
    if distill and data is None:
        raise UserError("--replay-distill changes the loss of replayed rows: add --replay-data (and a "
                        "--replay-fraction above 0)")
    return replace(config, replay_data=data, replay_fraction=fraction, replay_distill=distill)
