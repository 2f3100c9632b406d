"""Text normalizers for WER: Whisper's own, through the maintained PyPI package `whisper-normalizer`.

Whisper's English normalizer (numbers, currencies, contractions, titles, its 1,739 British-to-American
spellings) and its basic normalizer for every other language are used as they are, not re-written,
so that WER computed here compares with published Whisper figures (tests/test_normalizers.py checks
them against openai-whisper's own).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

__all__ = ["BasicTextNormalizer", "EnglishTextNormalizer", "normalizer_for", "normalizer_name"]


def is_english(language: Optional[str]) -> bool:
    """English, or unknown (an English-only model's utterances carry no language)."""
    return language in (None, "en", "english")


@lru_cache(maxsize=None)
def normalizer_for(language: Optional[str]):
    """Whisper's English normalizer for English, its basic one otherwise (one shared instance each)."""
    return EnglishTextNormalizer() if is_english(language) else BasicTextNormalizer()


def normalizer_name(language: Optional[str]) -> str:
    """How reports name the normalizer behind a normalized score."""
    try:
        package = f"whisper-normalizer {version('whisper-normalizer')}"
    except PackageNotFoundError:  # pragma: no cover - installed with the package
        package = "whisper-normalizer"
    return f"Whisper's {'English' if is_english(language) else 'basic'} normalizer ({package})"
