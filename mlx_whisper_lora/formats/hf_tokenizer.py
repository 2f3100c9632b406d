"""A transformers `tokenizer.json` for Whisper, built from the tiktoken vocabulary this package ships.

Needed when a model's source (an openai .pt file, an MLX folder) has no tokenizer.json, so that the
transformers export still loads in `pipeline(...)` and converts for faster-whisper. Built with the
`tokenizers` library (transformers' own dependency): byte-level BPE whose merges are read off the
tiktoken ranks, as transformers' TikTokenConverter does, then Whisper's special tokens in id order.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from ..errors import UserError
from ..text.tokenizer_bytes import byte_encoder
from .dims import ModelDimensions


def vocab_and_merges(ranks: Dict[bytes, int]) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    alphabet = byte_encoder()
    text = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731
    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[l], ranks[r], l, r) for l, r in splits]
    merges.sort()
    return vocab, [(text(l), text(r)) for _, _, _, l, r in merges]


def tokenizer_json(dims: ModelDimensions) -> str:
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise UserError("this model's source has no tokenizer.json, and writing one for the transformers export "
                        "needs the tokenizers package: pip install tokenizers") from None

    from ..text.tokenizer import get_tokenizer, read_ranks

    ours = get_tokenizer(dims.is_multilingual, dims.num_languages)
    ranks = read_ranks(None, dims.is_multilingual)
    vocab, merges = vocab_and_merges(ranks)
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    if hasattr(tokenizer.model, "ignore_merges"):
        tokenizer.model.ignore_merges = True  # a whole piece in the vocabulary is one token, as in tiktoken
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(ours.special_tokens.items(), key=lambda kv: kv[1])
    if specials[0][1] != len(vocab):
        raise ValueError(f"special tokens start at {specials[0][1]}, the vocabulary has {len(vocab)} entries")
    tokenizer.add_tokens([AddedToken(name, special=not name[2:3].isdigit(), normalized=False) for name, _ in specials])
    return tokenizer.to_str(pretty=False)
