"""Letter case of a dataset's transcripts, learned as a style rather than as new spellings.

Whisper's byte-pair vocabulary knows words in lower and sentence case; in upper case most words
split into short, rare pieces the model has barely seen (its training data dropped all-caps
transcripts). Fine-tuning on all-caps references (LibriSpeech, many corpora exported for Kaldi)
therefore makes the decoder re-learn spelling from a few minutes of speech, and it spells by ear:
measured here, normalized WER rose from 4.2% to 22% while raw WER fell. So when every training
transcript is upper case, the adapters are trained on the text in the case the model knows
(lower case, names capitalized where the vocabulary spells them so) and the style "upper" is stored
in adapter_config.json; transcripts made with the adapters are then upper-cased. All-lowercase data gets the style "lower" the same way.
`--case-style keep` trains on the text exactly as written.

Punctuation is a style too: when no training transcript has any, `punctuation: "none"` is stored
and transcripts are rendered without it. `--base-style-targets` goes one step further for such
data: the base model transcribes the training audio once, and the targets are the reference's
words written with the base model's case and punctuation wherever the two agree, so the adapters
learn the words the model gets wrong instead of re-learning how to write (which costs accuracy:
normalized WER rises with every step of style learning, docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Iterable, Optional

STYLES = ("auto", "keep", "upper", "lower")


def detect(texts: Iterable[str]) -> str:
    """'upper' if every transcript with cased letters has no lower-case one, 'lower' for the reverse,
    else 'keep'. Scripts without case (Chinese, Arabic, ...) do not vote."""
    upper = lower = 0
    for text in texts:
        has_upper = any(c.isupper() for c in text)
        has_lower = any(c.islower() for c in text)
        if has_upper and has_lower:
            return "keep"
        upper += has_upper
        lower += has_lower
    if upper and not lower:
        return "upper"
    if lower and not upper:
        return "lower"
    return "keep"


def resolve(requested: Optional[str], texts: Iterable[str]) -> str:
    requested = requested or "auto"
    if requested not in STYLES:
        raise ValueError(f"case style {requested!r}: expected one of {', '.join(STYLES)}")
    return detect(texts) if requested == "auto" else requested


def training_text(text: str, style: Optional[str], tokenizer=None, language: Optional[str] = None) -> str:
    """The text the decoder is trained on: for a one-case dataset, each word in the case the
    vocabulary knows best. Lower case, unless the capitalized word takes fewer tokens (names:
    " Philip" is one token, " philip" two), and the first word capitalized, as Whisper writes."""
    if style not in ("upper", "lower"):
        return text
    words = text.lower().split(" ")
    if tokenizer is None:
        return " ".join(words)
    out = []
    for i, word in enumerate(words):
        title = word[:1].upper() + word[1:]
        if word and (i == 0 or (word in ("i", "i'm", "i'll", "i've", "i'd") and language in (None, "en"))
                     or len(tokenizer.encode(" " + title)) < len(tokenizer.encode(" " + word))):
            word = title
        out.append(word)
    return " ".join(out)


def base_styled_text(reference: str, base_transcript: str, style: Optional[str], tokenizer=None,
                     language: Optional[str] = None) -> str:
    """The reference's words written as the base model wrote them (case and attached punctuation)
    wherever its transcript has the same word, aligned word by word; the other words as
    `training_text` writes them. Training on this, the adapters learn the words the base model
    got wrong rather than a new style (which `render` applies instead)."""
    import difflib

    def key(word: str) -> str:
        return "".join(c for c in word.lower() if c.isalnum() or c == "'").strip("'")

    words = training_text(reference, style, tokenizer, language).split()
    said = base_transcript.split()
    matcher = difflib.SequenceMatcher(a=[key(w) for w in words], b=[key(w) for w in said], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            words[i1:i2] = said[j1:j2]
    for i in range(1, len(words)):  # a sentence the base model ended starts with a capital
        if words[i - 1][-1:] in ".?!" and words[i][:1].islower():
            words[i] = words[i][:1].upper() + words[i][1:]
    return " ".join(words)


_SENTENCE_MARKS = set('.,?!;:"()[]{}…。，、？！；：«»“”„¡¿')


def has_punctuation(texts: Iterable[str]) -> bool:
    """Whether any transcript has sentence punctuation (apostrophes and hyphens inside words do not count)."""
    return any(c in _SENTENCE_MARKS for text in texts for c in text)


def strip_punctuation(text: str) -> str:
    """Text without punctuation, as unpunctuated corpora (LibriSpeech, Kaldi exports) write it:
    marks become spaces, apostrophes inside words stay ("nation's")."""
    import unicodedata

    out = []
    for i, c in enumerate(text):
        if c == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
            out.append(c)
        elif unicodedata.category(c).startswith("P") or c in _SENTENCE_MARKS:
            out.append(" ")
        else:
            out.append(c)
    return " ".join("".join(out).split())


def render(text: str, style: Optional[str], punctuation: Optional[str] = "keep") -> str:
    """A decoded transcript in the dataset's style: its case, and without punctuation when the
    training transcripts had none (punctuation "none")."""
    if punctuation == "none":
        text = strip_punctuation(text)
    if style == "upper":
        return text.upper()
    if style == "lower":
        return text.lower()
    return text
