"""Decode one 30-second window (or a batch of them): greedy, sampling, or beam search.

The network runs in either engine behind inference/decoding_model.py; choosing the next token
(suppression, timestamp rules, log-softmax, beam bookkeeping) runs in numpy on the last position's
logits, which is cheap and easy to read. This is the one decoder: transcription, the training loop's
validation and test decoding, and both engines go through it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.audio import CHUNK_LENGTH, N_FRAMES
from ..text.tokenizer import Tokenizer, get_tokenizer
from .decoding_model import require_decoding_model

if TYPE_CHECKING:
    from .decoding_model import DecodingModel


@dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"  # or "translate"
    language: Optional[str] = None  # None: detect
    temperature: float = 0.0
    sample_len: Optional[int] = None  # most tokens to sample; default half the text context
    best_of: Optional[int] = None  # independent samples when temperature > 0
    beam_size: Optional[int] = None  # beam search when set (temperature 0 only)
    patience: Optional[float] = None  # beam search: finished candidates = beam_size * patience
    length_penalty: Optional[float] = None  # None: divide log-prob by length; else Google NMT penalty
    prompt: Optional[Union[str, List[int]]] = None  # previous text, as context
    prefix: Optional[Union[str, List[int]]] = None  # forced start of this window's text
    suppress_tokens: Optional[Union[str, Sequence[int]]] = "-1"  # "-1": the non-speech symbols
    suppress_blank: bool = True  # no blank or end-of-text as the first sampled token
    without_timestamps: bool = False
    max_initial_timestamp: Optional[float] = 1.0
    seed: int = 0  # for sampling
    # greedy/sampling: a row whose text so far compresses past this ratio is a repetition loop and stops
    # there (its text is the loop so far), instead of keeping the whole batch going to sample_len
    stop_loops_at: Optional[float] = None
    # greedy: a row that ended leaves the batch (its cache rows are dropped, the rest decode faster); off where
    # something outside the decoder holds per-row state (the server's adapter bank selects an adapter per row)
    finished_rows_leave: bool = False


@dataclass
class DecodingResult:
    language: str
    tokens: List[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = float("nan")
    no_speech_prob: float = float("nan")
    temperature: float = float("nan")
    compression_ratio: float = float("nan")
    language_probs: Optional[Dict[str, float]] = None


def compression_ratio(text: str) -> float:
    """How much gzip shrinks the text: high for repetitive (looping) output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def looping_rows(tokenizer: Tokenizer, rows: np.ndarray, ratio: float) -> np.ndarray:
    """Which token rows (sampled text only, end token excluded) already read as a repetition loop:
    text that gzip shrinks more than `ratio` (Whisper's 2.4 test). A loop only grows more repetitive,
    so a row found here would fail the same test at its end; decoding it further is wasted."""
    eot = tokenizer.eot
    return np.array([compression_ratio(tokenizer.decode([t for t in row if t != eot]).strip()) > ratio
                     for row in rows.tolist()], dtype=bool)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.sum(np.exp(x - m))))


def detect_language(
    model: DecodingModel, audio_features: np.ndarray, tokenizer: Tokenizer
) -> Tuple[List[str], List[Dict[str, float]]]:
    """Most likely language per audio, and the probability of every language, from one decoder step."""
    if not model.is_multilingual:
        return ["en"] * audio_features.shape[0], [{"en": 1.0}] * audio_features.shape[0]
    tokens = np.full((audio_features.shape[0], 1), tokenizer.sot, dtype=np.int64)
    logits = model.decode_step(tokens, audio_features, None, positions=(0,))[0][:, 0]
    lang_tokens = np.array(tokenizer.all_language_tokens)
    probs = np.exp(_log_softmax(logits[:, lang_tokens]))
    codes = tokenizer.all_language_codes
    best = [codes[int(i)] for i in probs.argmax(axis=-1)]
    return best, [dict(zip(codes, map(float, row))) for row in probs]


class LogitFilter:
    """Forbids tokens by setting their logits to -inf, given the tokens so far (rows, length)."""

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.ids = tokenizer.encode(" ") + [tokenizer.eot]
        self.sample_begin = sample_begin

    def apply(self, logits, tokens):
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class SuppressTokens(LogitFilter):
    def __init__(self, ids: Sequence[int]):
        self.ids = list(ids)

    def apply(self, logits, tokens):
        logits[:, self.ids] = -np.inf


class TimestampRules(LogitFilter):
    """Whisper's timestamp grammar: timestamps come in pairs, never go back, and the window
    starts with one; when timestamps are jointly likelier than any text token, emit one."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: Optional[int]):
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits, tokens):
        ts_begin, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        logits[:, self.tokenizer.no_timestamps] = -np.inf
        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin :]
            last_ts = len(sampled) >= 1 and sampled[-1] >= ts_begin
            penultimate_ts = len(sampled) < 2 or sampled[-2] >= ts_begin
            if last_ts:
                if penultimate_ts:  # a pair just closed: text must follow
                    logits[k, ts_begin:] = -np.inf
                else:  # an opening timestamp: the next is another timestamp or the end
                    logits[k, :eot] = -np.inf
            timestamps = sampled[sampled >= ts_begin]
            if timestamps.size:
                floor = timestamps[-1] if (last_ts and not penultimate_ts) else timestamps[-1] + 1
                logits[k, ts_begin:floor] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :ts_begin] = -np.inf
            if self.max_initial_timestamp_index is not None:
                logits[:, ts_begin + self.max_initial_timestamp_index + 1 :] = -np.inf
        logprobs = _log_softmax(logits)
        for k in range(tokens.shape[0]):
            if _logsumexp(logprobs[k, ts_begin:]) > np.max(logprobs[k, :ts_begin]):
                logits[k, :ts_begin] = -np.inf


def suppressed_ids(options: DecodingOptions, tokenizer: Tokenizer) -> List[int]:
    spec = options.suppress_tokens
    if spec is None or spec == "":
        ids: List[int] = []
    elif isinstance(spec, str):
        ids = [int(t) for t in spec.split(",") if t.strip()]
    else:
        ids = list(spec)
    if -1 in ids:
        ids = [t for t in ids if t >= 0] + list(tokenizer.non_speech_tokens)
    ids += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm, tokenizer.no_speech]
    return sorted(set(ids))


def _text_tokens(tokenizer: Tokenizer, value) -> List[int]:
    if value is None:
        return []
    return tokenizer.encode(" " + value.strip()) if isinstance(value, str) else list(value)


class _Run:
    """State of one decode call over a batch: the model's caches and the per-row token lists."""

    def __init__(self, model: DecodingModel, tokenizer: Tokenizer, options: DecodingOptions,
                 audio_features: np.ndarray):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        n_ctx = model.dims.n_text_ctx
        self.sample_len = options.sample_len or n_ctx // 2
        initial = list(tokenizer.sot_sequence)
        if options.without_timestamps:
            initial.append(tokenizer.no_timestamps)
        prompt = _text_tokens(tokenizer, options.prompt)
        if prompt:
            initial = [tokenizer.sot_prev] + prompt[-(n_ctx // 2 - 1) :] + initial
        prefix = _text_tokens(tokenizer, options.prefix)
        prefix = prefix[-(n_ctx // 2 - 1) :]
        initial += prefix
        self.initial = initial
        self.sot_index = initial.index(tokenizer.sot)
        self.sample_begin = len(initial) - len(prefix)
        filters: List[LogitFilter] = []
        if options.suppress_blank:
            filters.append(SuppressBlank(tokenizer, len(initial)))
        filters.append(SuppressTokens(suppressed_ids(options, tokenizer)))
        if not options.without_timestamps:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx
            idx = None
            if options.max_initial_timestamp is not None:
                idx = int(round(options.max_initial_timestamp / precision))
            filters.append(TimestampRules(tokenizer, len(initial), idx))
        self.filters = filters
        self.audio_features = audio_features
        self.cache = None

    def first_step(self, tokens: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Feed the start sequences (rows, n): (no-speech probabilities, float32 logits of the last position)."""
        logits, self.cache = self.model.decode_step(tokens, self.audio_features, None,
                                                    positions=(self.sot_index, tokens.shape[1] - 1))
        no_speech = np.exp(_log_softmax(logits[:, 0]))[:, self.tokenizer.no_speech]
        return no_speech, logits[:, 1]

    def step(self, new_tokens: np.ndarray, rows: Optional[np.ndarray] = None, audio_too: bool = False) -> np.ndarray:
        """Feed one new token per row (rows, 1), after keeping only the cache `rows` (in that order) when
        given (`audio_too`: as DecodingModel.select_rows); float32 logits of the new position (rows, vocab)."""
        if rows is not None:
            self.cache = self.model.select_rows(self.cache, rows, audio_too)
        logits, self.cache = self.model.decode_step(new_tokens, self.audio_features, self.cache)
        return logits[:, -1]

    def filtered_logits(self, logits_last: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        logits = logits_last.astype(np.float32, copy=True)
        for f in self.filters:
            f.apply(logits, tokens)
        return logits


def _sample_or_greedy(run: _Run, n_audio: int, n_group: int, temperature: float, rng) -> Tuple[List[List[List[int]]], np.ndarray, np.ndarray]:
    """Returns per audio the n_group sampled sequences, their summed log-probs, and no-speech probs.
    Rows that ended are fed end-of-text to the end, except greedy ones with `finished_rows_leave` (sampled
    rows stay so that the random draws do not depend on when rows end)."""
    eot = run.tokenizer.eot
    rows = n_audio * n_group
    tokens = np.tile(np.array(run.initial, dtype=np.int64), (rows, 1))
    no_speech, last = run.first_step(tokens)
    no_speech = no_speech[::n_group]
    sum_logprobs = np.zeros(rows)
    finished = np.zeros(rows, dtype=bool)
    live = np.arange(rows)  # the rows the cache holds, in its order: `last` is theirs
    for _ in range(run.sample_len):
        logits = run.filtered_logits(last, tokens[live])
        logprobs = _log_softmax(logits)  # scores are at temperature 1, as openai-whisper keeps them
        if temperature == 0:
            pick = logits.argmax(axis=-1)
        else:
            # Gumbel-max: the same distribution as categorical sampling at this temperature.
            pick = (logits / temperature + rng.gumbel(size=logits.shape)).argmax(axis=-1)
        nxt = np.full(rows, eot, dtype=np.int64)
        nxt[live] = pick
        chosen = np.zeros(rows)
        chosen[live] = logprobs[np.arange(len(live)), pick]
        sum_logprobs += np.where(finished, 0.0, chosen)
        nxt = np.where(finished, eot, nxt)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        finished |= nxt == eot
        if run.options.stop_loops_at is not None and not finished.all():
            going = np.flatnonzero(~finished)
            finished[going[looping_rows(run.tokenizer, tokens[going, run.sample_begin:],
                                        run.options.stop_loops_at)]] = True
        if finished.all() or tokens.shape[1] > run.model.dims.n_text_ctx - 1:
            break
        if temperature == 0 and run.options.finished_rows_leave and finished[live].any():
            order = np.flatnonzero(~finished[live])
            live = live[order]
            last = run.step(nxt[live][:, None], rows=order, audio_too=True)
        else:
            last = run.step(nxt[live][:, None])
    seqs = []
    for a in range(n_audio):
        group = []
        for g in range(n_group):
            row = tokens[a * n_group + g, run.sample_begin :].tolist()
            group.append(row[: row.index(eot)] if eot in row else row)
        seqs.append(group)
    return seqs, sum_logprobs.reshape(n_audio, n_group), no_speech


def _beam_search(run: _Run, n_audio: int, beam_size: int, patience: float):
    """Beam search as openai-whisper defines it: keep `beam_size` live sequences per audio, collect
    finished ones until there are beam_size * patience of them, then rank by length-penalised score."""
    eot = run.tokenizer.eot
    max_candidates = max(1, int(round(beam_size * patience)))
    rows = n_audio * beam_size
    tokens = np.tile(np.array(run.initial, dtype=np.int64), (rows, 1))
    no_speech, last = run.first_step(tokens)
    no_speech = no_speech[::beam_size]
    sum_logprobs = np.zeros(rows)
    finished: List[Dict[Tuple[int, ...], float]] = [{} for _ in range(n_audio)]
    done = [False] * n_audio
    for step in range(run.sample_len):
        logprobs = _log_softmax(run.filtered_logits(last, tokens))
        new_rows, new_tokens, new_scores = [], [], []
        for a in range(n_audio):
            base = a * beam_size
            if done[a]:  # keep the rows in place; their output is ignored
                for j in range(beam_size):
                    new_rows.append(base + j)
                    new_tokens.append(eot)
                    new_scores.append(sum_logprobs[base + j])
                continue
            candidates: Dict[Tuple[int, ...], Tuple[float, int, int]] = {}
            # On the first step all beams are identical: expand only one.
            beams = range(1) if step == 0 else range(beam_size)
            for j in beams:
                r = base + j
                top = np.argpartition(-logprobs[r], beam_size)[: beam_size + 1]
                for t in top:
                    score = sum_logprobs[r] + logprobs[r, t]
                    key = tuple(tokens[r].tolist()) + (int(t),)
                    if key not in candidates or candidates[key][0] < score:
                        candidates[key] = (score, r, int(t))
            ranked = sorted(candidates.items(), key=lambda kv: kv[1][0], reverse=True)
            kept = 0
            for key, (score, r, t) in ranked:
                if t == eot:
                    if len(finished[a]) < max_candidates:
                        finished[a][key[run.sample_begin : -1]] = score
                    continue
                new_rows.append(r)
                new_tokens.append(t)
                new_scores.append(score)
                kept += 1
                if kept == beam_size:
                    break
            while kept < beam_size:  # fewer live candidates than beams: pad with the best
                new_rows.append(new_rows[-1] if kept else base)
                new_tokens.append(eot)
                new_scores.append(-np.inf)
                kept += 1
            done[a] = len(finished[a]) >= max_candidates
        if all(done):
            break
        order = np.array(new_rows)
        tokens = np.concatenate([tokens[order], np.array(new_tokens)[:, None]], axis=1)
        sum_logprobs = np.array(new_scores, dtype=np.float64)
        if tokens.shape[1] > run.model.dims.n_text_ctx - 1:
            break
        last = run.step(np.array(new_tokens)[:, None], rows=order)
    seqs, scores = [], []
    for a in range(n_audio):
        found = dict(finished[a])
        if len(found) < beam_size:  # not enough finished: take the live beams too
            for j in np.argsort(-sum_logprobs[a * beam_size : (a + 1) * beam_size]):
                r = a * beam_size + int(j)
                if np.isfinite(sum_logprobs[r]):
                    found.setdefault(tuple(t for t in tokens[r, run.sample_begin :].tolist() if t != eot), sum_logprobs[r])
                if len(found) >= beam_size:
                    break
        seqs.append([list(k) for k in found])
        scores.append(list(found.values()))
    return seqs, scores, no_speech


def _rank(seqs: List[List[int]], logprobs: Sequence[float], length_penalty: Optional[float]) -> int:
    best, best_score = 0, -np.inf
    for i, (s, lp) in enumerate(zip(seqs, logprobs)):
        length = len(s) + 1  # count the end-of-text token, as the log-probs do
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        score = lp / penalty
        if score > best_score:
            best, best_score = i, score
    return best


def decode(
    model: DecodingModel,
    mel: Optional[np.ndarray],
    options: DecodingOptions = DecodingOptions(),
    tokenizer: Optional[Tokenizer] = None,
    audio_features: Optional[np.ndarray] = None,
) -> List[DecodingResult]:
    """Decode log-mel windows (batch, frames, n_mels) or one (frames, n_mels), or their encoder states
    `audio_features`; one result per window."""
    model = require_decoding_model(model)
    single = mel is not None and mel.ndim == 2
    if audio_features is None:
        if single:
            mel = mel[None]
        if mel.shape[1] != N_FRAMES:
            raise ValueError(f"decode expects {N_FRAMES}-frame windows; pad or trim the mel first")
        audio_features = model.encode_audio(np.asarray(mel))
    n_audio = audio_features.shape[0]
    if options.beam_size is not None and options.temperature > 0:
        raise ValueError("beam search is deterministic: use temperature 0 with beam_size")
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("best_of applies to sampling, beam_size to beam search: give one of them")

    base_tok = tokenizer or get_tokenizer(model.is_multilingual, model.num_languages, task=options.task,
                                          model_dir=model.folder)
    languages = [options.language] * n_audio
    language_probs: List[Optional[Dict[str, float]]] = [None] * n_audio
    if options.language is None and model.is_multilingual:
        languages, language_probs = detect_language(model, audio_features, base_tok)
    elif not model.is_multilingual:
        languages = ["en"] * n_audio

    results: List[Optional[DecodingResult]] = [None] * n_audio
    # Rows with the same language share one decode run (the start sequence depends on it).
    for lang in sorted(set(languages)):
        idx = [i for i, l in enumerate(languages) if l == lang]
        tok = get_tokenizer(model.is_multilingual, model.num_languages, language=lang, task=options.task,
                            model_dir=model.folder) if tokenizer is None or model.is_multilingual else tokenizer
        feats = audio_features if len(idx) == n_audio else audio_features[np.array(idx)]
        for j, r in zip(idx, _decode_same_language(model, tok, options, feats, lang)):
            r.language_probs = language_probs[j]
            results[j] = r
    return results  # type: ignore[return-value]


def _decode_same_language(model, tokenizer, options, audio_features, language) -> List[DecodingResult]:
    n_audio = audio_features.shape[0]
    if options.beam_size is not None:
        n_group = options.beam_size
    elif options.temperature > 0 and options.best_of:
        n_group = options.best_of
    else:
        n_group = 1
    feats = np.repeat(audio_features, n_group, axis=0) if n_group > 1 else audio_features
    run = _Run(model, tokenizer, options, feats)
    if options.beam_size is not None:
        seqs, scores, no_speech = _beam_search(run, n_audio, options.beam_size, options.patience or 1.0)
    else:
        rng = np.random.default_rng(options.seed)
        seqs, sum_lp, no_speech = _sample_or_greedy(run, n_audio, n_group, options.temperature, rng)
        scores = sum_lp.tolist()
    results = []
    for a in range(n_audio):
        best = _rank(seqs[a], scores[a], options.length_penalty)
        toks = seqs[a][best]
        text = tokenizer.decode(toks).strip()
        results.append(
            DecodingResult(
                language=language,
                tokens=toks,
                text=text,
                avg_logprob=float(scores[a][best]) / (len(toks) + 1),
                no_speech_prob=float(no_speech[a]),
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
            )
        )
    return results
