"""GPT-2's reversible mapping between bytes and printable characters (byte-level BPE vocabularies
store tokens in this form, e.g. 'Ġ' for a space)."""

import functools
from typing import Dict


@functools.lru_cache()
def byte_encoder() -> Dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@functools.lru_cache()
def byte_decoder() -> Dict[str, int]:
    return {c: b for b, c in byte_encoder().items()}
