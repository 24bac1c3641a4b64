"""Text normalisers, applied to references, hypotheses and training targets: one for English,
Whisper's basic one for every other language (``normalize(text, language)``).

Other languages: Whisper's ``BasicTextNormalizer`` lower-cases, drops bracketed and
parenthesised spans and every symbol and punctuation mark (an apostrophe splits "l'homme" into
"l homme"), and keeps letters with their diacritics ("sí" and "si" are different words in
Spanish); ``strip_diacritics`` removes them, for references written without them (the asterisk
prompts' transcripts are). Numbers are not rewritten: "dos" and "2" differ.

English:

It wraps Whisper's English normaliser (transformers' copy of OpenAI's code), which lower-cases,
drops punctuation, bracketed and parenthesised spans and fillers (um, uh, hmm), expands
contractions ("what's" -> "what is"), writes numbers as digits ("twenty one" -> "21",
"ten percent" -> "10%", "five pounds" -> "£5") and maps British spellings to American ones.
Around it sit a few rules for voice-assistant text that Whisper's normaliser leaves split:

- clock times: "7:30" -> "730", which is what Whisper makes of "seven thirty";
- dotted initialisms: "a.m." -> "am", "T.V." -> "tv";
- "a m" / "p m" right after a number -> "am" / "pm" (a recogniser's spelling of the letters);
- "o'clock" / "o clock" -> "oclock", so that its "o" is not read as zero ("six o'clock" -> "60").

Unified: "ten"/"10", "twenty one"/"21", "seven thirty a m"/"7:30 a.m.", "What's"/"what is",
"TV."/"tv", "colour"/"color", "OK"/"okay", "cannot"/"can't".
Not unified (different words, so a mismatch is counted as an error): "half past seven"/"7:30",
"seven o'clock"/"7:00", "a hundred"/"100", "all right"/"alright", "e-mail"/"email",
"t v"/"tv" away from a number, "555-1234"/"five five five one two three four", "mum"/"mom".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from transformers.models.whisper.english_normalizer import (
    BasicTextNormalizer,
    EnglishTextNormalizer,
)

# British -> American spellings of the same word, written for this project (Whisper's own
# 1,700-entry list lives on the model hub, which this machine cannot reach). Only spelling
# conventions are mapped; different words with different sounds ("mum"/"mom",
# "aeroplane"/"airplane") are kept apart because a recogniser that swaps them made an error.
BRITISH_TO_AMERICAN = {
    # -our -> -or
    "colour": "color",
    "colours": "colors",
    "coloured": "colored",
    "favour": "favor",
    "favourite": "favorite",
    "favourites": "favorites",
    "flavour": "flavor",
    "flavours": "flavors",
    "honour": "honor",
    "humour": "humor",
    "labour": "labor",
    "neighbour": "neighbor",
    "neighbours": "neighbors",
    "neighbourhood": "neighborhood",
    "behaviour": "behavior",
    "harbour": "harbor",
    "rumour": "rumor",
    "odour": "odor",
    "armour": "armor",
    "savoury": "savory",
    # -re -> -er
    "centre": "center",
    "centres": "centers",
    "theatre": "theater",
    "theatres": "theaters",
    "metre": "meter",
    "metres": "meters",
    "kilometre": "kilometer",
    "kilometres": "kilometers",
    "centimetre": "centimeter",
    "centimetres": "centimeters",
    "millimetre": "millimeter",
    "millimetres": "millimeters",
    "litre": "liter",
    "litres": "liters",
    "millilitre": "milliliter",
    "millilitres": "milliliters",
    "fibre": "fiber",
    # -ise -> -ize, -yse -> -yze
    "organise": "organize",
    "organised": "organized",
    "organising": "organizing",
    "organisation": "organization",
    "realise": "realize",
    "realised": "realized",
    "recognise": "recognize",
    "recognised": "recognized",
    "apologise": "apologize",
    "prioritise": "prioritize",
    "customise": "customize",
    "customised": "customized",
    "personalise": "personalize",
    "personalised": "personalized",
    "minimise": "minimize",
    "maximise": "maximize",
    "synchronise": "synchronize",
    "synchronised": "synchronized",
    "memorise": "memorize",
    "summarise": "summarize",
    "categorise": "categorize",
    "analyse": "analyze",
    "analysed": "analyzed",
    # doubled l
    "travelling": "traveling",
    "travelled": "traveled",
    "traveller": "traveler",
    "travellers": "travelers",
    "cancelled": "canceled",
    "cancelling": "canceling",
    "labelled": "labeled",
    "labelling": "labeling",
    "modelling": "modeling",
    "fuelled": "fueled",
    "jewellery": "jewelry",
    "enrol": "enroll",
    "fulfil": "fulfill",
    "instalment": "installment",
    "skilful": "skillful",
    # -ence -> -ense, -ogue -> -og, others
    "defence": "defense",
    "offence": "offense",
    "licence": "license",
    "practise": "practice",
    "practised": "practiced",
    "programme": "program",
    "programmes": "programs",
    "catalogue": "catalog",
    "analogue": "analog",
    "aluminium": "aluminum",
    "grey": "gray",
    "greys": "grays",
    "tyre": "tire",
    "tyres": "tires",
    "pyjamas": "pajamas",
    "mould": "mold",
    "plough": "plow",
    "ageing": "aging",
    "judgement": "judgment",
    "manoeuvre": "maneuver",
    "cosy": "cozy",
    "sceptical": "skeptical",
    "yoghurt": "yogurt",
    "moustache": "mustache",
}

# Variant spellings within one dialect; the spelling step maps single words, so a
# one-to-two-word split ("cannot" -> "can not", as Whisper writes "can't") works too.
VARIANT_SPELLINGS = {"ok": "okay", "cannot": "can not"}

SPELLING_MAPPING = {**BRITISH_TO_AMERICAN, **VARIANT_SPELLINGS}

_whisper = EnglishTextNormalizer(SPELLING_MAPPING)

_CURLY_APOSTROPHE = re.compile(r"[\u2018\u2019\u02bc]")
_CLOCK_TIME = re.compile(r"\b(\d{1,2}):(\d{2})(?!\d)")  # "7:30am" too
_INITIALISM = re.compile(r"\b[a-z](?:\.[a-z]\b)+\.?")
_OCLOCK = re.compile(r"\bo'?\s*clock\b")
_SPELLED_AM_PM = re.compile(r"\b(\d+) ([ap]) m\b")


_basic = {strip: BasicTextNormalizer(remove_diacritics=strip) for strip in (False, True)}


@functools.lru_cache(maxsize=1 << 16)
def normalize(text: str, language: str = "en", strip_diacritics: bool = False) -> str:
    """Normalise one transcript in ``language`` (Whisper's code: en, es, fr, ...) for training
    targets and WER; English always loses its diacritics.

    Deterministic and idempotent for the texts the tests cover; returns words separated by single
    spaces with no leading or trailing space ("" for text with no words). Cached, because the same
    reference text recurs across accents and noise conditions.
    """
    if language != "en":
        # NFC first: a decomposed "é" (e + combining accent) must equal the composed one
        s = _basic[strip_diacritics](unicodedata.normalize("NFC", text))
        return " ".join(w for w in s.split() if any(c.isalnum() for c in w))
    s = _CURLY_APOSTROPHE.sub("'", text.lower())
    s = _CLOCK_TIME.sub(r"\1\2", s)
    s = _INITIALISM.sub(lambda m: m.group(0).replace(".", ""), s)
    s = _OCLOCK.sub("oclock", s)
    s = _whisper(s)
    s = _SPELLED_AM_PM.sub(r"\1 \2m", s)
    # Whisper's normaliser can leave a lone "." (from "..."); a token with no letter or digit
    # is not a word.
    return " ".join(w for w in s.split() if any(c.isalnum() for c in w))


def normalize_batch(
    texts: Iterable[str], language: str = "en", strip_diacritics: bool = False
) -> list[str]:
    """``normalize`` applied to each text, in order."""
    return [normalize(t, language, strip_diacritics) for t in texts]
