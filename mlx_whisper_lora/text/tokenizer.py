"""Whisper's tokenizer on tiktoken: byte-level BPE plus the special and timestamp tokens.

The BPE ranks come from the model folder (`tokenizer.json`, or `vocab.json` + `merges.txt`) or
from the bundled `mlx_whisper_lora/assets/{gpt2,multilingual}.tiktoken` that `scripts/make_tiktoken_assets.py`
derives from those files. Ranks equal token ids in Whisper's vocabularies, so tiktoken's merge
order reproduces the Hugging Face tokenizer's ids.
"""

from __future__ import annotations

import base64
import functools
import json
import string
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import tiktoken

from .languages import LANGUAGES, language_code
from .tokenizer_bytes import byte_decoder as _byte_decoder

from ..assets_dir import ASSETS
from ..files import atomic_write_text
UNREACHABLE_TOKEN = b"\xff\xfe"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def ranks_from_vocab(vocab: Dict[str, int]) -> Dict[bytes, int]:
    """Turn a byte-level BPE vocabulary (HF format) into tiktoken ranks, dropping special tokens."""
    decoder = _byte_decoder()
    ranks = {}
    for token, idx in vocab.items():
        if token.startswith("<|") and token.endswith("|>"):
            continue
        # The multilingual vocabulary holds one empty placeholder (id 50256). Give it bytes that
        # UTF-8 text never contains, so it keeps its id but can never be produced by encoding.
        ranks[bytes(decoder[ch] for ch in token) if token else UNREACHABLE_TOKEN] = idx
    return ranks


def read_ranks(model_dir: Optional[Path], multilingual: bool) -> Dict[bytes, int]:
    """Ranks from the model folder when it has a vocabulary, else from the bundled asset."""
    if model_dir is not None:
        model_dir = Path(model_dir)
        tj = model_dir / "tokenizer.json"
        if tj.exists():
            return ranks_from_vocab(json.loads(tj.read_text(encoding="utf-8"))["model"]["vocab"])
        vj = model_dir / "vocab.json"
        if vj.exists():
            return ranks_from_vocab(json.loads(vj.read_text(encoding="utf-8")))
    return read_tiktoken_file(ASSETS / ("multilingual.tiktoken" if multilingual else "gpt2.tiktoken"))


def read_tiktoken_file(path: Path) -> Dict[bytes, int]:
    ranks = {}
    for line in Path(path).read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def write_tiktoken_file(ranks: Dict[bytes, int], path: Path) -> None:
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write_text(path, "\n".join(lines) + "\n")


class Tokenizer:
    """Encode/decode text and name Whisper's special tokens for one vocabulary, language and task."""

    def __init__(
        self,
        ranks: Dict[bytes, int],
        num_languages: int,
        language: Optional[str] = None,
        task: Optional[str] = None,
        name: str = "whisper",
        merges_bpe=None,
    ):
        """merges_bpe: a MergesBPE to encode text exactly as transformers does (see merges_bpe.py);
        None encodes with tiktoken, as openai-whisper and mlx-whisper do."""
        self.merges_bpe = merges_bpe
        self.num_languages = num_languages
        self.language = language_code(language) if language else None
        if task not in (None, "transcribe", "translate"):
            raise ValueError(f"unknown task {task!r}; use 'transcribe' or 'translate'")
        self.task = task
        specials = [
            "<|endoftext|>",
            "<|startoftranscript|>",
            *[f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]],
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nospeech|>",
            "<|notimestamps|>",
            *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
        ]
        n = len(ranks)
        self._placeholder = ranks.get(UNREACHABLE_TOKEN, -1)
        self.special_tokens = {tok: n + i for i, tok in enumerate(specials)}
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )

    # ---- ids of the special tokens
    @property
    def eot(self) -> int:
        return self.special_tokens["<|endoftext|>"]

    @property
    def sot(self) -> int:
        return self.special_tokens["<|startoftranscript|>"]

    @property
    def transcribe(self) -> int:
        return self.special_tokens["<|transcribe|>"]

    @property
    def translate(self) -> int:
        return self.special_tokens["<|translate|>"]

    @property
    def sot_lm(self) -> int:
        return self.special_tokens["<|startoflm|>"]

    @property
    def sot_prev(self) -> int:
        return self.special_tokens["<|startofprev|>"]

    @property
    def no_speech(self) -> int:
        return self.special_tokens["<|nospeech|>"]

    @property
    def no_timestamps(self) -> int:
        return self.special_tokens["<|notimestamps|>"]

    @property
    def timestamp_begin(self) -> int:
        return self.special_tokens["<|0.00|>"]

    @property
    def multilingual(self) -> bool:
        return len(self.encoding._mergeable_ranks) > 50256

    def language_token_for(self, code: str) -> int:
        code = language_code(code)
        token = self.special_tokens.get(f"<|{code}|>")
        if token is None:
            raise ValueError(f"language {code!r} is not in this model's vocabulary")
        return token

    @property
    def language_token(self) -> int:
        if self.language is None:
            raise ValueError("this tokenizer has no language set")
        return self.language_token_for(self.language)

    @functools.cached_property
    def all_language_tokens(self) -> Tuple[int, ...]:
        return tuple(self.special_tokens[f"<|{c}|>"] for c in list(LANGUAGES)[: self.num_languages])

    @functools.cached_property
    def all_language_codes(self) -> Tuple[str, ...]:
        return tuple(list(LANGUAGES)[: self.num_languages])

    @property
    def sot_sequence(self) -> Tuple[int, ...]:
        """<|startoftranscript|>, then language and task for multilingual models."""
        seq = [self.sot]
        if self.multilingual:
            if self.language is not None:
                seq.append(self.language_token)
            if self.task is not None:
                seq.append(self.translate if self.task == "translate" else self.transcribe)
        return tuple(seq)

    @property
    def sot_sequence_including_notimestamps(self) -> Tuple[int, ...]:
        return self.sot_sequence + (self.no_timestamps,)

    # ---- text
    def encode(self, text: str) -> List[int]:
        if self.merges_bpe is not None:
            return self.merges_bpe.encode(text)
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of the tokens, without timestamp tokens."""
        return self.encoding.decode([t for t in tokens if t < self.timestamp_begin and t != self._placeholder])

    def decode_with_timestamps(self, tokens: Sequence[int]) -> str:
        """Text with timestamps written as <|1.08|>."""
        return self.encoding.decode(list(tokens))

    @functools.cached_property
    def non_speech_tokens(self) -> Tuple[int, ...]:
        """Tokens of symbols that are not speech (♪, brackets, ...), suppressed by default.

        A leading space is allowed only for ' -' and ' '' so that hyphens and quotes at word
        starts remain possible.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encoding.encode(" -")[0], self.encoding.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encoding.encode(symbol), self.encoding.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def to_language_token(self, language: str) -> int:
        """openai-whisper's name for `language_token_for`."""
        return self.language_token_for(language)

    def split_to_word_tokens(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        """Group tokens into words (split at spaces and punctuation; per character for CJK-like scripts)."""
        if self.language in {"zh", "ja", "th", "lo", "my", "yue"}:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_spaces(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        """Words that start at a space or are punctuation, each with its tokens."""
        words, word_tokens = [], []
        sub_words, sub_tokens = self.split_tokens_on_unicode(tokens)
        for sw, st in zip(sub_words, sub_tokens):
            special = st[0] >= self.eot
            starts_with_space = sw.startswith(" ")
            punctuation = sw.strip() in string.punctuation
            if special or starts_with_space or punctuation or not words:
                words.append(sw)
                word_tokens.append(list(st))
            else:
                words[-1] += sw
                word_tokens[-1].extend(st)
        return words, word_tokens

    def split_tokens_on_unicode(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        """Pieces of whole characters: tokens are grouped until they decode without a broken UTF-8 sequence."""
        words, word_tokens, current = [], [], []
        decoded_full = self.decode_with_timestamps(tokens)
        pos = 0
        for t in tokens:
            current.append(t)
            decoded = self.decode_with_timestamps(current)
            if "\ufffd" not in decoded or decoded_full[pos + decoded.index("\ufffd")] == "\ufffd":
                words.append(decoded)
                word_tokens.append(current)
                current = []
                pos += len(decoded)
        return words, word_tokens


@functools.lru_cache(maxsize=8)
def _cached_ranks(model_dir: Optional[str], multilingual: bool) -> Dict[bytes, int]:
    return read_ranks(Path(model_dir) if model_dir else None, multilingual)


def get_tokenizer(
    multilingual: bool,
    num_languages: int = 99,
    language: Optional[str] = None,
    task: Optional[str] = None,
    model_dir: Optional[str] = None,
    bpe: str = "tiktoken",
) -> Tokenizer:
    """A tokenizer for a model; multilingual ones default to English transcription, as openai-whisper.

    bpe: "tiktoken" (openai-whisper's ids) or "merges" (transformers' ids; needs the model folder's
    tokenizer.json or vocab.json + merges.txt). They differ on some multilingual-vocabulary words."""
    if bpe not in ("tiktoken", "merges"):
        raise ValueError(f"bpe must be 'tiktoken' or 'merges', not {bpe!r}")
    if multilingual:
        language = language or "en"
        task = task or "transcribe"
    else:
        language, task = "en", None
    return _cached_tokenizer(multilingual, num_languages, language, task, str(model_dir) if model_dir else None, bpe)


@functools.lru_cache(maxsize=64)
def _cached_tokenizer(multilingual: bool, num_languages: int, language, task, model_dir, bpe) -> Tokenizer:
    """Building tiktoken's Encoding takes ~0.1 s: reuse tokenizers across windows and files."""
    merges_bpe = None
    if bpe == "merges":
        from .merges_bpe import MergesBPE

        if model_dir is None:
            raise ValueError("bpe='merges' needs the model folder's tokenizer.json or vocab.json + merges.txt")
        merges_bpe = MergesBPE.from_folder(Path(model_dir), GPT2_PATTERN)
    return Tokenizer(_cached_ranks(model_dir, multilingual), num_languages, language=language, task=task,
                     name="multilingual" if multilingual else "gpt2", merges_bpe=merges_bpe)
