"""`--replay-data self`: replay without general-domain data. A share of the training audio is
transcribed once by the base model in `--general-language` (English unless told otherwise), and those
rows join training in that language; with --replay-distill (the default for them) they learn the base
model's whole next-token distribution along its transcript, computed each step with the adapters off.

Why: adapters trained on one new language change the decoder for every language token, so English
decoding starts writing the new language's spelling (measured on Yoruba: English WER 3.9% -> 22.1%).
Replaying real English speech prevents most of it, but a user adapting to a new language may have none
at hand; the base model's own English reading of the training audio is always there, and it asks the
adapters to leave decoding under the general language token as the base model does. Its transcripts
alone (tokens as targets) kept English 5.6 points worse; its distribution, 1.3 to 1.6 at lr 1e-3 and
0.3 to 1.2 at the default 5e-4 (docs/benchmarks.md).
With distillation, a few generated noise clips read by the base model in the training language join
them too (noise_replay_utterances says why).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..data.examples import REPLAY_ID_PREFIX
from ..files import atomic_write_text
from ..inference.decoding import compression_ratio
from ..tuner.data_prep import prepare_split
from ..tuner.distributed import world_of
from ..tuner.encoder_cache import CachedStates
from ..scoring.evaluation import transcribe_examples
from ..scoring.no_speech import no_speech_training_clips, training_languages
from ..tuner.run_config import RunConfig

SELF = "self"
LOOP_RATIO = 2.4  # Whisper's own test for a repetition loop (gzip compression ratio of the text)
# a reading longer than this is a loop too (fast English speech is ~5 tokens a second): decoding stops
# there instead of running a loop to 224 tokens, which kept whole batches going (Yoruba: 41 loops in 256)
LOOP_TOKENS_PER_SECOND = 10.0
# the base model's pass over the drawn audio grows with it (base on this 2-core CPU: ~1 s an utterance);
# it reads at most half the training utterances and at most MAX_TRANSCRIBED, and beyond that the replayed
# rows repeat: the guard's default half of each batch (replay_choice.py) then costs the pass a third
# of the batch did (measured on Yoruba: 256 readings of 520 utterances, repeated to fill half the rows)
MAX_TRANSCRIBED, MAX_TRANSCRIBED_SHARE = 512, 0.5
TARGETS_FILE = "self_replay_targets.jsonl"  # what was replayed, for the user to read
# distilled noise rows: a share of the training utterances (at least one; at most MAX_NOISE distinct, repeated beyond)
NOISE_SHARE, MAX_NOISE = 0.05, 64


def self_replay_utterances(backend, utterances: list, config: RunConfig, log: Callable,
                           warm: Optional[list] = None) -> list:
    """`replay_fraction` of the training rows, drawn with the seed from the training utterances (at most
    half of them and MAX_TRANSCRIBED, repeated beyond: replay_counts), relabelled with the base model's
    greedy transcripts in the general language (empty ones and loops left out), also written to the
    adapter folder. With
    --replay-distill (the default here) those transcripts are only the path along which the rows learn
    the base model's distribution. Call it before training: the adapters are still zero then, and the
    passes decode with them switched off, as the base model.
    `warm`: a list that receives the passes' encoder states (encoder_cache.CachedStates), for the
    training cache to take instead of encoding that audio again (CachedStates.adopt; the caller
    closes them); None: no states are kept."""
    count, distinct = replay_counts(len(utterances), float(config.replay_fraction))
    if distinct <= 0:
        return []
    language = config.general_language
    drawn = [replace(utterances[i], id=f"{REPLAY_ID_PREFIX}self:{utterances[i].id}", language=language)
             for i in sorted(random.Random(int(config.seed)).sample(range(len(utterances)), distinct))]
    read = base_readings(backend, drawn, replace(config, language=language), warm, lambda n: log(
        f"replay: transcribing {n} of the training utterances with the base model in {language} (--replay-data self)"))
    # the base model reading speech it does not know falls into loops ("I'm a baby. I'm a baby. ..."):
    # replaying those would teach loops, so they are left out
    kept = [replace(u, text=text) for u, text in read if text.strip() and compression_ratio(text) <= LOOP_RATIO]
    log(f"replay: {len(kept)} of them (those not empty or a repetition loop), with the base model's {language} "
        f"transcripts, mixed into the {len(utterances)} training utterances"
        + (" (its distribution the target: --replay-distill)" if config.replay_distill else ""))
    noise = noise_replay_utterances(backend, utterances, config, log, warm) if adds_noise_rows(config) else []
    if world_of(backend).is_main:
        atomic_write_text(Path(config.adapter_path) / TARGETS_FILE, "".join(
            json.dumps({"id": u.id, "audio": u.audio if isinstance(u.audio, str) else "", "language": u.language,
                        "text": u.text}, ensure_ascii=False) + "\n" for u in kept + noise[:MAX_NOISE]))
    if kept and count > distinct:  # a larger share than the transcribed rows: they repeat
        kept = [kept[i % len(kept)] for i in range(round(count * len(kept) / distinct))]
    return kept + noise


def replay_counts(training_rows: int, fraction: float) -> tuple:
    """(replayed rows, distinct utterances the base model reads for them): `fraction` of all rows once
    mixed in, read from at most MAX_TRANSCRIBED_SHARE of the training utterances and MAX_TRANSCRIBED."""
    count = round(fraction / (1 - fraction) * training_rows)
    return count, min(count, math.ceil(MAX_TRANSCRIBED_SHARE * training_rows), MAX_TRANSCRIBED)


def adds_noise_rows(config: RunConfig) -> bool:
    """Whether self-replay brings noise rows: with distillation (on unless turned off), and not when
    --no-speech-fraction asks for empty transcripts on the same family of clips (it takes their place)."""
    return config.replay_distill is not False and not float(config.no_speech_fraction)


def base_readings(backend, rows: list, config: RunConfig, warm: Optional[list],
                  announce: Callable[[int], None]) -> List[Tuple[object, str]]:
    """(utterance, the base model's greedy transcript) for each readable row: the rows labelled, `announce`d
    with their number, then transcribed in batches with loops cut short (their encoder states kept in `warm`
    for training to take)."""
    examples, _ = prepare_split(backend.model, rows, "replay", config, lambda m: None, timestamps=False, style="keep")
    announce(len(examples))
    indices, texts = transcribe_examples(backend, examples, config.task, config.decoding_batch(), config.progress,
                                         states=kept_states(backend, examples, config, warm),
                                         tokens_per_second=LOOP_TOKENS_PER_SECOND, base_model=True,
                                         stop_loops_at=LOOP_RATIO)
    return [(examples.utterances[i], text) for i, text in zip(indices, texts)]


def kept_states(backend, examples, config: RunConfig, warm: Optional[list]) -> Optional[CachedStates]:
    """An encoder-state cache for a pass whose states training will take (added to `warm`), or None."""
    if warm is None:
        return None
    states = CachedStates(examples, backend, int(float(config.cache_memory_gb) * (1 << 30)),
                          Path(config.adapter_path), config.decoding_batch())
    warm.append(states)
    return states


def noise_replay_utterances(backend, utterances: list, config: RunConfig, log: Callable,
                            warm: Optional[list] = None) -> list:
    """Generated silence and noise clips (no_speech.py's training family), NOISE_SHARE of the training
    utterances, in the training rows' languages, with the base model's greedy reading there (empty when
    it is a loop) as the path along which they learn the base model's distribution.

    Why: adapters that learn only speech grow sure of words where there are none. Whisper's no-speech
    rule keeps a window whose text is likely enough (mean log-probability above -1), so confident
    words on noise reach the user (Yoruba with the guard: words on 5 of the report's 8 clips, the base
    model 0). Empty targets (--no-speech-fraction) teach a new behaviour; these rows only ask the
    adapters to stay as unsure there as the base model, whose doubt the rule reads. Left out when
    --no-speech-fraction asks for empty transcripts there instead."""
    count = max(1, round(NOISE_SHARE * len(utterances)))
    languages = training_languages(utterances, config.language)
    clips = [replace(u, id=f"{REPLAY_ID_PREFIX}{u.id}")
             for u in no_speech_training_clips(min(count, MAX_NOISE), languages, int(config.seed),
                                               longest=float(config.max_duration))]
    plural = "" if len(clips) == 1 else "s"
    read = [replace(u, text=text if compression_ratio(text) <= LOOP_RATIO else "")
            for u, text in base_readings(backend, clips, config, warm, lambda n: log(
                f"replay: reading {len(clips)} generated silence and noise clip{plural} with the base model in "
                f"{', '.join(languages) or 'the detected language'}, to keep its doubt where nobody speaks"))]
    return [read[i % len(read)] for i in range(count)] if read else []
