"""Language codes: one normaliser for every stage that reads a row's language."""
from __future__ import annotations

from typing import Optional

LABEL_PREFIX = "__label__"

#: ISO 639-2/3 (and a few macro-language members) -> the ISO 639-1 code the lists use
ISO3_TO_ISO1 = {
    "ara": "ar", "arb": "ar", "ces": "cs", "cze": "cs", "dan": "da", "deu": "de", "ger": "de",
    "eng": "en", "epo": "eo", "spa": "es", "fas": "fa", "per": "fa", "pes": "fa", "fin": "fi",
    "tgl": "fil", "fra": "fr", "fre": "fr", "hin": "hi", "hun": "hu", "ita": "it", "jpn": "ja",
    "kor": "ko", "nld": "nl", "dut": "nl", "nor": "no", "nob": "no", "nno": "no", "nb": "no",
    "nn": "no", "pol": "pl", "por": "pt", "rus": "ru", "swe": "sv", "tha": "th", "tur": "tr",
    "zho": "zh", "chi": "zh", "cmn": "zh", "yue": "zh", "wuu": "zh", "ell": "el", "gre": "el",
    "ukr": "uk", "ron": "ro", "rum": "ro", "ind": "id", "vie": "vi", "cat": "ca", "hrv": "hr",
}


def normalize_language(code: Optional[str]) -> Optional[str]:
    """``en``, ``EN``, ``eng``, ``eng_Latn``, ``en-US``, ``__label__en`` -> ``en``; None/empty -> None."""
    if code is None:
        return None
    c = code.strip()
    if c.startswith(LABEL_PREFIX):
        c = c[len(LABEL_PREFIX):]
    base = c.lower().replace("-", "_").split("_", 1)[0]
    return ISO3_TO_ISO1.get(base, base) or None
