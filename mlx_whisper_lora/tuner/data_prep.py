"""The data of a `lora` run: split expressions read from --data or --hf-dataset, checked and
labelled for the model (shared by training, testing and the forgetting check).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..assets_dir import ASSETS
from ..data.examples import ExampleSet
from ..data.manifests import DataError, check_utterances, load_folder_split, load_hf_split
from ..data.splits import hold_out, hold_out_groups, overlap
from ..errors import UserError
from ..text.tokenizer import get_tokenizer
from .run_config import RunConfig


def read_splits(config: RunConfig, names: List[str], log: Callable = lambda m: None) -> Dict[str, Optional[list]]:
    """Raw utterances of the requested splits ('train', 'valid', 'test') from --data or --hf-dataset,
    each named by a split expression (--train-split train+validation). When training reads the
    validation split too, a slice of the training data is held out to validate on instead."""
    out: Dict[str, Optional[list]] = {}
    expressions = {"train": config.train_split, "valid": config.valid_split, "test": config.test_split}
    for name in names:
        required = name != "valid"  # a dataset without a validation split trains without validation
        if "train" in names and name == "valid" and overlap(config.train_split, config.valid_split):
            continue
        if name == "train" and config.streaming:
            out[name] = None  # read as a stream by streamed_train_batches
            continue
        if config.hf_dataset:
            try:
                out[name] = load_hf_split(config.hf_dataset, expressions[name], config.hf_dataset_config,
                                          config.audio_column, config.text_column, streaming=config.streaming)
            except UserError:
                if required:
                    raise
                out[name] = None
        else:
            out[name] = load_folder_split(Path(config.data or ASSETS / "demo_data"), expressions[name], required)
    if out.get("train") and config.max_samples is not None and len(out["train"]) > int(config.max_samples):
        log(f"train: using the first {int(config.max_samples)} of {len(out['train'])} rows (--max-samples)")
        out["train"] = out["train"][: int(config.max_samples)]
    if "train" in names and "valid" in names and overlap(config.train_split, config.valid_split) and config.streaming:
        out["valid"] = None
        log(f"warning: --train-split {config.train_split} includes the validation split; a stream has no held-out "
            "slice, so training runs without validation")
    elif "train" in names and "valid" in names and overlap(config.train_split, config.valid_split):
        out["train"], out["valid"] = hold_out(out["train"], seed=int(config.seed))
        log(f"warning: --train-split {config.train_split} includes the validation split "
            f"({'+'.join(overlap(config.train_split, config.valid_split))}); validating on {len(out['valid'])} "
            "utterances held out of the training data instead")
    elif "train" in names and "valid" in names and not out.get("valid") and out.get("train") \
            and float(config.valid_fraction) > 0:
        out["train"], out["valid"], how = hold_out_groups(out["train"], float(config.valid_fraction), int(config.seed))
        if out["valid"]:
            log(f"validation: no {config.valid_split} split, so {len(out['valid'])} of the "
                f"{len(out['train']) + len(out['valid'])} training rows are held out to validate on ({how}; "
                "--valid-fraction 0 trains on all of them)")
    if "test" in names and overlap(config.train_split, config.test_split):
        log(f"warning: --train-split {config.train_split} includes the test split {config.test_split}: "
            "test scores are on data the model trained on")
    return out


def tokenizer_for(model, task: str):
    return get_tokenizer(model.is_multilingual, model.num_languages, task=task, model_dir=model.folder)


def prepare_split(model, utterances, name: str, config: RunConfig, log: Callable, timestamps: bool,
                  style: str = "keep") -> tuple:
    """(checked, labelled examples of a split, skip report); labels written in the case `style` trains on."""
    language = config.language or (None if model.is_multilingual else "en")
    longer = [] if name == "train" and timestamps else None  # training cuts long clips into windows
    kept, report = check_utterances(utterances, name, min(float(config.max_duration), 30.0),
                                    default_language=language, multilingual=model.is_multilingual, longer=longer)
    for line in report.lines():
        log(line)
    if longer:
        from ..preparing.long_clips import FOLDER, split_long_clips

        kept += split_long_clips(longer, model.source or "tiny.en", Path(config.adapter_path) / FOLDER,
                                 min(float(config.max_duration), 30.0), language, log, bool(config.progress))
    if not kept:
        raise DataError(f"no usable utterance in the {name} split ({report.skipped} skipped); see the lines above")
    missing_language = [u.id for u in kept if model.is_multilingual and not u.language]
    if missing_language:
        raise DataError(f"{missing_language[0]} has no language and the model is multilingual; "
                        "add a language field or pass --language")
    if name == "train" and timestamps:
        if config.sentence_times and float(config.timestamp_fraction) > 0:
            from ..preparing.recordings import default_aligner
            from ..preparing.clip_segments import timed_parts

            english = all((u.language or language) == "en" for u in kept)
            kept = timed_parts(kept, default_aligner("en" if english else None), log, bool(config.progress))
        kept = packed_clips(kept, float(config.pack_fraction), log)
    fraction = float(config.timestamp_fraction) if timestamps else 0.0
    prompts = float(config.prompt_fraction) if timestamps else 0.0  # scoring rows: as transcribe reads a clip
    examples, cut = ExampleSet.build(kept, tokenizer_for(model, config.task), config.task, model.dims.n_mels,
                                     model.dims.n_text_ctx, fraction, int(config.seed), name, style, prompts)
    if cut:
        log(f"{name}: {cut} labels longer than the decoder context ({model.dims.n_text_ctx} tokens) were cut")
    return examples, report


def packed_clips(utterances: list, fraction: float, log: Callable) -> list:
    """The training clips with --pack-fraction of them packed into windows (data/packing.py); every clip
    of a known recording, session or speaker knows the text said before it (for --prompt-fraction)."""
    from ..data.packing import pack

    rows, packed = pack(utterances, fraction)
    if packed:
        windows = len(rows) - (len(utterances) - packed)
        grouped = sum(1 for u in utterances if u.group is not None)
        how = "clips of one recording, session or speaker" if grouped == len(utterances) else \
            "clips of one recording, session or speaker where the data says so, else consecutive rows"
        log(f"packing: {packed} of {len(utterances)} training clips joined into {windows} windows of up to 30 s "
            f"({how}; --pack-fraction {fraction:g})")
    return rows


def open_train_stream(config: RunConfig):
    """The training split as a `datasets` IterableDataset (--streaming)."""
    from ..data.streaming import open_stream

    if config.hf_dataset:
        return open_stream(config.hf_dataset, config.train_split, config.hf_dataset_config)
    return open_stream(str(config.data or ASSETS / "demo_data"), config.train_split, folder_data=True)


def stream_sample(config: RunConfig, rows: int = 1000) -> list:
    """The first rows of the training stream (unshuffled): enough to settle the text style."""
    from ..data.streaming import stream_utterances

    return list(stream_utterances(open_train_stream(config), config.audio_column, config.text_column,
                                  buffer_size=0, max_samples=min(rows, config.max_samples or rows)))


def streamed_train_batches(model, config: RunConfig, style: str, rank: int = 0, processes: int = 1, mixed=()):
    """--streaming: batches checked and labelled as they are read, from a shuffle buffer of
    --shuffle-buffer rows; the training split is never held in memory as a whole. In a
    data-parallel run each of the `processes` reads its own rows and makes its share of the batch.
    `mixed`: MixedRows (replay, no-speech clips) drawn into the batches."""
    from ..data.streaming import stream_utterances
    from .streamed_batches import StreamedBatches

    stream = open_train_stream(config)
    language = config.language or (None if model.is_multilingual else "en")
    tokenizer = tokenizer_for(model, config.task)
    labelled = [0]

    def open_epoch(epoch: int):
        return stream_utterances(stream, config.audio_column, config.text_column, seed=int(config.seed), epoch=epoch,
                                 buffer_size=int(config.shuffle_buffer), max_samples=config.max_samples,
                                 shard=(rank, processes))

    def check(utterances: list) -> list:
        kept, _ = check_utterances(utterances, "train", min(float(config.max_duration), 30.0),
                                   default_language=language, multilingual=model.is_multilingual)
        for u in kept:
            if model.is_multilingual and not u.language:
                raise DataError(f"{u.id} has no language and the model is multilingual; add a language field or "
                                "pass --language")
        return kept

    def label(utterances: list) -> ExampleSet:
        labelled[0] += 1  # each batch its own draw of timestamp targets
        examples, _ = ExampleSet.build(utterances, tokenizer, config.task, model.dims.n_mels, model.dims.n_text_ctx,
                                       float(config.timestamp_fraction), int(config.seed) * 100003 + labelled[0],
                                       "train", style, float(config.prompt_fraction))
        return examples

    return StreamedBatches(open_epoch, check, label, int(config.batch_size) // processes, config.max_samples,
                           [replace(m, seed=m.seed * 1009 + rank) for m in mixed])
