"""Text normalizers for WER: Whisper's conventions, written for this package.

`EnglishTextNormalizer` follows the rules of the Whisper paper's English normalizer (lower case,
no bracketed asides or fillers, expanded contractions and titles, spelled numbers as digits,
American spellings, no punctuation) so that scores compare with published Whisper figures.
`BasicTextNormalizer` (lower case, symbols and punctuation removed) serves every other language.
"""

from __future__ import annotations

import re
import unicodedata
from typing import List, Optional

# Letters that NFKD does not decompose into a base letter and a mark.
_EXTRA_DIACRITICS = {
    "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS", "đ": "d",
    "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th", "ł": "l", "Ł": "L",
}


def remove_symbols_and_diacritics(text: str, keep: str = "") -> str:
    """Strip accents (é -> e) and turn marks, symbols and punctuation into spaces, except `keep`."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if ch in keep:
            out.append(ch)
        elif ch in _EXTRA_DIACRITICS:
            out.append(_EXTRA_DIACRITICS[ch])
        elif unicodedata.category(ch) == "Mn":
            continue
        elif unicodedata.category(ch)[0] in "MSP":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def remove_symbols(text: str) -> str:
    """Turn marks, symbols and punctuation into spaces, keeping accented letters (NFKC)."""
    return "".join(" " if unicodedata.category(c)[0] in "MSP" else c for c in unicodedata.normalize("NFKC", text))


_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]")
_PARENS = re.compile(r"\(([^)]+?)\)")


class BasicTextNormalizer:
    """Lower case, no bracketed asides, no symbols or punctuation, single spaces (any language)."""

    def __init__(self, remove_diacritics: bool = False, split_letters: bool = False):
        self.clean = remove_symbols_and_diacritics if remove_diacritics else remove_symbols
        self.split_letters = split_letters

    def __call__(self, text: str) -> str:
        text = _PARENS.sub("", _BRACKETS.sub("", text.lower()))
        text = self.clean(text).lower()
        if self.split_letters:
            text = " ".join(_grapheme_clusters(text))
        return re.sub(r"\s+", " ", text).strip()


def _grapheme_clusters(text: str) -> List[str]:
    import regex

    return regex.findall(r"\X", text, regex.U)


# ---------------------------------------------------------------- English
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_ONES_VALUE = {w: i for i, w in enumerate(_ONES)}
# 'ninth' is left as a word, as Whisper's normalizer leaves it.
_ONES_ORDINAL = {"zeroth": 0, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
                 "seventh": 7, "eighth": 8, "tenth": 10, "eleventh": 11, "twelfth": 12}
_ONES_ORDINAL.update({w + "th": i for w, i in _ONES_VALUE.items() if i >= 13})
_ONES_PLURAL = {("sixes" if w == "six" else w + "s"): i for w, i in _ONES_VALUE.items() if i > 0}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_TENS_ORDINAL = {w[:-1] + "ieth": v for w, v in _TENS.items()}
_TENS_PLURAL = {w[:-1] + "ies": v for w, v in _TENS.items()}
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_MULTIPLIER_ORDINAL = {w + "th": v for w, v in _MULTIPLIERS.items()}
_MULTIPLIER_PLURAL = {w + "s": v for w, v in _MULTIPLIERS.items()}
_CURRENCY_WORDS = {"dollar": "$", "dollars": "$", "pound": "£", "pounds": "£", "euro": "€", "euros": "€",
                   "cent": "¢", "cents": "¢"}
_SUFFIX = {1: "st", 2: "nd", 3: "rd"}


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else _SUFFIX.get(n % 10, "th")


class _NumberParser:
    """Turns runs of spelled-out number words into digits: 'twenty one' -> '21',
    'nineteen ninety nine' -> '1999', 'one hundred and five' -> '105', 'third' -> '3rd',
    'three point five percent' -> '3.5%', 'twenty dollars' -> '$20'."""

    def __call__(self, words: List[str]) -> List[str]:
        out: List[str] = []
        i = 0
        while i < len(words):
            n, value, suffix = self._parse(words, i)
            if n == 1 and words[i] in ("one", "ones"):
                n = 0  # a lone 'one' is usually a pronoun ('one of them'), as Whisper's normalizer keeps it
            if n == 0:
                out.append(words[i])
                i += 1
                continue
            i += n
            text = value
            if i < len(words) and words[i] in ("percent", "per") and (words[i] == "percent" or words[i + 1:i + 2] == ["cent"]):
                i += 1 if words[i] == "percent" else 2
                text += "%"
            elif i < len(words) and words[i] in _CURRENCY_WORDS and not suffix:
                sign = _CURRENCY_WORDS[words[i]]
                i += 1
                text = text + sign if sign == "¢" else sign + text
            out.append(text + suffix)
        return out

    def _parse(self, words: List[str], start: int):
        """(words consumed, digits, suffix) for the number starting at `start`; 0 words if none."""
        total = 0          # completed groups (thousands, millions)
        current = None     # value of the group being read
        digits = ""        # digit string for concatenated runs ('nineteen ninety' -> 1990)
        i = start
        suffix = ""
        last = None        # kind of the previous word
        while i < len(words):
            w = words[i]
            if w in _ONES_VALUE or w in _ONES_ORDINAL or w in _ONES_PLURAL:
                v = _ONES_VALUE.get(w, _ONES_ORDINAL.get(w, _ONES_PLURAL.get(w)))
                if current is None:
                    current = v
                elif last == "tens" and current % 10 == 0 and v < 10:
                    current += v
                elif last in ("ones", "tens") and v >= 10:
                    current = current * 100 + v      # 'nineteen twelve' -> 1912
                elif last in ("ones", "tens"):
                    digits += str(total + current)   # 'one two' -> '12'
                    total, current = 0, v
                elif last == "mult":
                    current += v
                else:
                    break
                last = "ones"
                if w in _ONES_ORDINAL:
                    suffix = _ordinal_suffix(v)
                    i += 1
                    break
                if w in _ONES_PLURAL:
                    suffix = "s"
                    i += 1
                    break
            elif w in _TENS or w in _TENS_ORDINAL or w in _TENS_PLURAL:
                v = _TENS.get(w, _TENS_ORDINAL.get(w, _TENS_PLURAL.get(w)))
                if current is None:
                    current = v
                elif last == "ones" and current >= 10 and not total:
                    current = current * 100 + v      # 'nineteen ninety' -> 1990
                elif last == "tens" or last == "ones":
                    digits += str(total + current)
                    total, current = 0, v
                elif last == "mult":
                    current += v
                else:
                    break
                last = "tens"
                if w in _TENS_ORDINAL:
                    suffix = "th"
                    i += 1
                    break
                if w in _TENS_PLURAL:
                    suffix = "s"
                    i += 1
                    break
            elif w in _MULTIPLIERS or w in _MULTIPLIER_ORDINAL or w in _MULTIPLIER_PLURAL:
                v = _MULTIPLIERS.get(w, _MULTIPLIER_ORDINAL.get(w, _MULTIPLIER_PLURAL.get(w)))
                if current is None:
                    current = 1  # 'thousands' -> 1000s
                if v == 100:
                    current *= 100
                else:
                    total += current * v
                    current = 0
                last = "mult"
                if w in _MULTIPLIER_ORDINAL:
                    suffix = "th"
                    i += 1
                    break
                if w in _MULTIPLIER_PLURAL:
                    suffix = "s"
                    i += 1
                    break
            elif w == "and" and last == "mult" and i + 1 < len(words) and (
                words[i + 1] in _ONES_VALUE or words[i + 1] in _TENS or words[i + 1] in _ONES_ORDINAL
            ):
                pass  # 'one hundred and five'
            elif w == "point" and current is not None and i + 1 < len(words) and words[i + 1] in _ONES_VALUE:
                decimals = ""
                j = i + 1
                while j < len(words) and words[j] in _ONES_VALUE and _ONES_VALUE[words[j]] < 10:
                    decimals += str(_ONES_VALUE[words[j]])
                    j += 1
                if not decimals:
                    break
                return j - start, digits + str(total + current) + "." + decimals, ""
            elif w == "oh" and last in ("ones", "tens") and i + 1 < len(words) and words[i + 1] in _ONES_VALUE:
                current = current * 100  # 'nineteen oh five' -> 1905 after the next digit
                last = "tens"
            elif w == "oh" and current is None:
                current, last = 0, "ones"  # Whisper's normalizer reads 'oh' as zero
            else:
                break
            i += 1
        if current is None:
            return 0, "", ""
        return i - start, digits + str(total + current), suffix


_CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"), (r"\bain't\b", "aint"),
    (r"\by'all\b", "you all"), (r"\bwanna\b", "want to"), (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"),
    (r"\bi'ma\b", "i am going to"), (r"\bimma\b", "i am going to"), (r"\bwoulda\b", "would have"),
    (r"\bcoulda\b", "could have"), (r"\bshoulda\b", "should have"), (r"\bma'am\b", "madam"),
    # titles before a name
    (r"\bmr\b", "mister "), (r"\bmrs\b", "missus "), (r"\bst\b", "saint "), (r"\bdr\b", "doctor "),
    (r"\bprof\b", "professor "), (r"\bcapt\b", "captain "), (r"\bgov\b", "governor "), (r"\bald\b", "alderman "),
    (r"\bgen\b", "general "), (r"\bsen\b", "senator "), (r"\brep\b", "representative "), (r"\bpres\b", "president "),
    (r"\brev\b", "reverend "), (r"\bhon\b", "honorable "), (r"\basst\b", "assistant "), (r"\bassoc\b", "associate "),
    (r"\blt\b", "lieutenant "), (r"\bcol\b", "colonel "), (r"\bjr\b", "junior "), (r"\bsr\b", "senior "),
    (r"\besq\b", "esquire "),
    # perfect tenses
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
    # the rest
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"), (r"'ll\b", " will"),
    (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"),
]
_CONTRACTIONS = [(re.compile(p), r) for p, r in _CONTRACTIONS]

# British spellings that Whisper's normalizer writes the American way (common words).
_BRITISH = """
aeroplane airplane ageing aging aluminium aluminum analyse analyze analysed analyzed
apologise apologize apologised apologized armour armor behaviour behavior behaviours behaviors cancelled canceled
cancelling canceling catalogue catalog centre center centres centers centred centered characterise characterize
cheque check civilisation civilization colour color colours colors coloured colored criticise criticize
criticised criticized defence defense dialogue dialog emphasise emphasize endeavour endeavor favour favor
favours favors favourite favorite favourites favorites favoured favored fibre fiber flavour flavor grey gray
harbour harbor honour honor honours honors honoured honored humour humor jewellery jewelry labour labor
licence license litre liter manoeuvre maneuver metre meter metres meters mould mold neighbour neighbor
neighbours neighbors neighbourhood neighborhood odour odor offence offense organisation organization
organise organize organised organized parlour parlor plough plow practise practice programme program
programmes programs realise realize realised realized recognise recognize recognised recognized rumour rumor
savour savor sceptical skeptical sombre somber specialise specialize splendour splendor sympathise sympathize
theatre theater theatres theaters travelled traveled traveller traveler travelling traveling tyre tire
vapour vapor vigour vigor woollen woolen apologising apologizing realising realizing recognising recognizing
organising organizing colourful colorful honourable honorable labourer laborer moustache mustache
"""
_SPELLINGS = dict(zip(_BRITISH.split()[0::2], _BRITISH.split()[1::2]))
# Regular families: -our -> -or, -lled -> -led, -ise -> -ize, in their inflected forms.
for _stem in ("armour ardour behaviour candour clamour colour endeavour favour fervour flavour harbour honour humour "
              "labour neighbour odour parlour rigour rumour savour splendour tumour valour vapour vigour").split():
    for _end in ("", "s", "ed", "ing", "ful", "able", "ably", "ite", "ites", "er", "ers", "less", "hood", "hoods"):
        _SPELLINGS.setdefault(_stem + _end, _stem[:-2] + "r" + _end)
for _stem in ("cancel channel counsel dial equal fuel funnel jewel label level marvel model pencil quarrel signal "
              "total travel tunnel").split():
    for _end in ("ed", "ing", "er", "ers"):
        _SPELLINGS.setdefault(_stem + "l" + _end, _stem + _end)
for _stem in ("apolog author capital categor central character civil colon critic emphas familiar fertil final "
              "general global ideal immun industrial legal maxim memor minim modern natural optim organ prior real "
              "recogn special standard summar symbol sympath util visual").split():
    for _end in ("e", "ed", "es", "ing", "ation", "ations", "er", "ers"):
        _SPELLINGS.setdefault(_stem + "is" + _end, _stem + "iz" + _end)
_FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")


class EnglishTextNormalizer:
    """Whisper's English normalization, for WER comparable with published figures."""

    def __init__(self):
        self.numbers = _NumberParser()

    def __call__(self, text: str) -> str:
        s = text.lower()
        s = _PARENS.sub("", _BRACKETS.sub("", s))
        s = _FILLERS.sub("", s)
        s = re.sub(r"\s+'", "'", s)  # "don 't" -> "don't"
        s = s.replace("’", "'")
        for pattern, repl in _CONTRACTIONS:
            s = pattern.sub(repl, s)
        s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
        s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods not inside numbers
        s = remove_symbols_and_diacritics(s, keep=".%$¢€£")
        s = re.sub(r"([a-z])([0-9])", r"\1 \2", s)
        s = re.sub(r"([0-9])([a-z])", r"\1 \2", s)
        words = [w for w in s.split() if w]
        words = [self._spell(w) for w in self.numbers(words)]
        s = " ".join(words)
        s = re.sub(r"\b(\d+) (st|nd|rd|th|s)\b", r"\1\2", s)  # '21 st' -> '21st'
        s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)
        s = re.sub(r"([^0-9])%", r"\1 ", s)
        return re.sub(r"\s+", " ", s).strip()

    @staticmethod
    def _spell(word: str) -> str:
        return _SPELLINGS.get(word, word)


def normalizer_for(language: Optional[str]):
    """English normalizer for English (or an English-only model), the basic one otherwise."""
    if language in (None, "en", "english"):
        return EnglishTextNormalizer()
    return BasicTextNormalizer()
