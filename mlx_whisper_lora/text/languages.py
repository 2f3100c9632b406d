"""Whisper's languages in token order: the n-th entry is the n-th language token."""

LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

# Names and common aliases to codes, so users may write "German", "castilian" or "de".
TO_LANGUAGE_CODE = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}


# Languages Whisper has no token for, trained and decoded under the token of a related language
# (same family or region, and a similar writing system): code or name -> (Whisper code, why).
RELATED = {
    "ig": ("yo", "Igbo: a Niger-Congo tone language of Nigeria written in Latin letters with tone marks, like Yoruba"),
    "ak": ("yo", "Akan/Twi: a West African Niger-Congo tone language, like Yoruba"),
    "tw": ("yo", "Twi: a West African Niger-Congo tone language, like Yoruba"),
    "ee": ("yo", "Ewe: a West African Niger-Congo tone language, like Yoruba"),
    "zu": ("sn", "Zulu: a Southern Bantu language, like Shona"),
    "xh": ("sn", "Xhosa: a Southern Bantu language, like Shona"),
    "st": ("sn", "Sesotho: a Southern Bantu language, like Shona"),
    "tn": ("sn", "Tswana: a Southern Bantu language, like Shona"),
    "ny": ("sn", "Chichewa: a Bantu language of Malawi and Zambia, like Shona"),
    "rw": ("sw", "Kinyarwanda: an East African Bantu language, like Swahili"),
    "rn": ("sw", "Kirundi: an East African Bantu language, like Swahili"),
    "lg": ("sw", "Luganda: an East African Bantu language, like Swahili"),
    "om": ("so", "Oromo: a Cushitic language written in Latin letters, like Somali"),
    "ti": ("am", "Tigrinya: an Ethiopic-script Semitic language, like Amharic"),
    "ky": ("kk", "Kyrgyz: a Kipchak Turkic language in Cyrillic script, like Kazakh"),
    "ug": ("uz", "Uyghur: a Karluk Turkic language, like Uzbek"),
    "ku": ("fa", "Kurdish: an Iranian language, like Persian"),
    "ckb": ("fa", "Central Kurdish: an Iranian language in Arabic script, like Persian"),
    "or": ("bn", "Odia: an Eastern Indo-Aryan language, like Bengali"),
    "mai": ("hi", "Maithili: an Indo-Aryan language in Devanagari, like Hindi"),
    "bho": ("hi", "Bhojpuri: an Indo-Aryan language in Devanagari, like Hindi"),
    "ks": ("ur", "Kashmiri: an Indo-Aryan language in Perso-Arabic script, like Urdu"),
    "dv": ("si", "Dhivehi: an Insular Indo-Aryan language, like Sinhala"),
    "ga": ("cy", "Irish: a Celtic language, like Welsh"),
    "gd": ("cy", "Scottish Gaelic: a Celtic language, like Welsh"),
    "fy": ("nl", "West Frisian: a West Germanic language, like Dutch"),
    "co": ("it", "Corsican: an Italo-Romance language, like Italian"),
    "sc": ("it", "Sardinian: a Romance language of Italy, like Italian"),
    "ast": ("es", "Asturian: an Ibero-Romance language, like Spanish"),
    "an": ("es", "Aragonese: an Ibero-Romance language, like Spanish"),
    "qu": ("es", "Quechua: written with Spanish-based orthography, spoken beside Spanish"),
    "gn": ("es", "Guarani: written with Spanish-based orthography, spoken beside Spanish"),
    "ceb": ("tl", "Cebuano: a Philippine language, like Tagalog"),
    "ilo": ("tl", "Ilocano: a Philippine language, like Tagalog"),
    "fil": ("tl", "Filipino: standardized Tagalog"),
}
RELATED_NAMES = {"igbo": "ig", "akan": "ak", "twi": "tw", "ewe": "ee", "zulu": "zu", "xhosa": "xh", "sesotho": "st",
                 "sotho": "st", "tswana": "tn", "setswana": "tn", "chichewa": "ny", "nyanja": "ny",
                 "kinyarwanda": "rw", "kirundi": "rn", "luganda": "lg", "ganda": "lg", "oromo": "om",
                 "tigrinya": "ti", "kyrgyz": "ky", "kirghiz": "ky", "uyghur": "ug", "kurdish": "ku",
                 "sorani": "ckb", "odia": "or", "oriya": "or", "maithili": "mai", "bhojpuri": "bho",
                 "kashmiri": "ks", "dhivehi": "dv", "maldivian": "dv", "irish": "ga", "scottish gaelic": "gd",
                 "gaelic": "gd", "frisian": "fy", "west frisian": "fy", "corsican": "co", "sardinian": "sc",
                 "asturian": "ast", "aragonese": "an", "quechua": "qu", "guarani": "gn", "cebuano": "ceb",
                 "ilocano": "ilo", "filipino": "fil"}


def related_language(language: str):
    """(Whisper code, why) for a language Whisper has no token for but a related one; else None."""
    key = language.strip().lower()
    return RELATED.get(RELATED_NAMES.get(key, key))


def language_code(language: str) -> str:
    """Normalise a language code or name to Whisper's code (a language Whisper lacks to the code of
    a related one, see RELATED); raise ValueError naming the input."""
    key = language.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    related = related_language(key)
    if related:
        return related[0]
    raise ValueError(
        f"unknown language {language!r}; use a code such as 'en', 'de', 'fr' or a name such as 'german'"
    )


def language_note(language: str):
    """What a user is told when their language is trained under a related language's token."""
    related = related_language(language)
    if not related:
        return None
    code, why = related
    return (f"language {language!r} has no token in Whisper's vocabulary: it is trained and decoded as "
            f"{code!r} ({LANGUAGES[code]}); {why}. Transcribe with --language {code} (or {language}).")
