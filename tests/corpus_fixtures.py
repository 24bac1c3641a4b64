"""Miniature real corpora in their published on-disk and hub formats, spoken by espeak-ng.

Each builder writes the corpus's own layout, file names, column names and transcript format
(values taken from the real corpora), with a few speakers and utterances.
"""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
import soxr

from pipeline.prepare.corpora.l2arctic import SPEAKER_L1
from tests.factories import encode, speak

SENTENCES = (
    "turn on the kitchen lights",
    "set a timer for ten minutes",
    "what is the weather tomorrow",
    "play some quiet music",
    "call my sister please",
    "open the front door",
)
VOICES = ("en-us", "en-gb", "en-029", "en-gb-scotland")


@functools.lru_cache(maxsize=64)
def _voice(index: int, rate: int) -> tuple[np.ndarray, str]:
    """Sentence ``index`` (cycling through voices) at ``rate`` Hz, and its text."""
    text = SENTENCES[index % len(SENTENCES)]
    wave, espeak_rate = speak(text, VOICES[index % len(VOICES)])
    return soxr.resample(wave, espeak_rate, rate).astype(np.float32), text


def speech(index: int, rate: int = 16000) -> tuple[np.ndarray, str]:
    wave, text = _voice(index % 24, rate)
    return wave.copy(), text


def tar_gz(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return out


# --- OpenSLR: LibriSpeech and MUSAN ----------------------------------------------------------


def librispeech_archive(out_dir: Path, subset: str, speakers: int, per_speaker: int) -> Path:
    """``<subset>.tar.gz`` as OpenSLR 12 ships it: LibriSpeech/<subset>/<spk>/<chapter>/."""
    build = out_dir / f"build-{subset}"
    base = build / "LibriSpeech"
    (base / subset).mkdir(parents=True)
    (base / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET | MINUTES | NAME\n")
    for s in range(speakers):
        speaker, chapter = str(100 + 37 * s), str(5000 + 11 * s)
        folder = base / subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for n in range(per_speaker):
            wave, text = speech(s * per_speaker + n)
            utt = f"{speaker}-{chapter}-{n:04d}"
            sf.write(folder / f"{utt}.flac", wave, 16000, subtype="PCM_16")
            lines.append(f"{utt} {text.upper()}\n")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return tar_gz(build, out_dir / f"{subset}.tar.gz")


def musan_archive(out_dir: Path, free_sound: int = 9, sound_bible: int = 3) -> Path:
    """``musan.tar.gz`` as OpenSLR 17 ships it: musan/{music,noise,speech}/<source>/*.wav."""
    rng = np.random.default_rng(0)
    base = out_dir / "build-musan" / "musan"
    folders = [
        ("noise", "free-sound", free_sound),
        ("noise", "sound-bible", sound_bible),
        ("music", "fma", 1),
        ("speech", "librivox", 1),
    ]
    for category, source, count in folders:
        folder = base / category / source
        folder.mkdir(parents=True)
        (folder / "ANNOTATIONS").write_text("file annotation\n")
        (folder / "LICENSE").write_text("license\n")
        for i in range(count):
            # each recording its own colour of noise, 2-4 s long
            n = 16000 * int(rng.integers(2, 5))
            wave = np.cumsum(rng.standard_normal(n)) * rng.uniform(0.0, 0.9)
            wave = rng.standard_normal(n) + wave - np.mean(wave)
            wave = 0.1 * wave / np.max(np.abs(wave))
            sf.write(folder / f"{category}-{source}-{i:04d}.wav", wave, 16000, subtype="PCM_16")
    (base / "README").write_text("MUSAN\n")
    return tar_gz(base.parent, out_dir / "musan.tar.gz")


# --- EdAcc on the Hugging Face hub ------------------------------------------------------------

EDACC_ACCENTS = (
    "Nigerian English",
    "Kenyan English",
    "Jamaican English",
    "Mainstream US English",
    "Southern British English",
    "Indian English",
)
EDACC_L1 = {
    "Nigerian English": "Yoruba",
    "Kenyan English": "Swahili",
    "Jamaican English": "Jamaican Creole",
    "Mainstream US English": "English",
    "Southern British English": "English",
    "Indian English": "Hindi",
}


def edacc_parquet(out_dir: Path, validation: int = 36, test: int = 18) -> Path:
    """The hub repository's data files: data/{validation,test}-0000x-of-0000y.parquet with
    columns speaker, text, accent, raw_accent, gender, l1, audio (encoded bytes).

    Validation ends with a segment marked IGNORE_TIME_SEGMENT_IN_SCORING and one holding only
    a tag. Speakers come in conversation pairs (EDACC-C<nn>-A/B), one segment each.
    """
    for split, rows in (("validation", validation), ("test", test)):
        data: dict[str, list] = {k: [] for k in ("speaker", "text", "accent", "raw_accent")}
        data.update(gender=[], l1=[], audio=[])
        offset = 0 if split == "validation" else 100
        for i in range(rows + (2 if split == "validation" else 0)):
            accent = EDACC_ACCENTS[i % len(EDACC_ACCENTS)]
            wave, text = speech(offset + i)
            if i == rows:
                text = "IGNORE_TIME_SEGMENT_IN_SCORING"
            elif i == rows + 1:
                text = "<laugh>"
            elif i % 4 == 0:
                text = f"<breath> {text} <laugh>"
            # two speakers a conversation; the test split's conversations are others
            conversation = (50 if split == "test" else 0) + i // 2
            data["speaker"].append(f"EDACC-C{conversation:02d}-{'AB'[i % 2]}")
            data["text"].append(text)
            data["accent"].append(accent)
            data["raw_accent"].append(accent.replace(" English", "").lower())
            data["gender"].append("female" if i % 3 else "male")
            data["l1"].append(EDACC_L1[accent])
            flac = encode(wave, 16000, fmt="FLAC")
            data["audio"].append({"bytes": flac, "path": None})
        ds = datasets.Dataset.from_dict(data).cast_column("audio", datasets.Audio(decode=False))
        (out_dir / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out_dir / "data" / f"{split}-00000-of-00001.parquet"))
    return out_dir


# --- Common Voice release folder --------------------------------------------------------------

CV_COLUMNS = [
    "client_id",
    "path",
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
]
INDIA = "India and South Asia (India, Pakistan, Sri Lanka)"
CV_ACCENTS = (
    INDIA,
    "United States English",
    "Liverpool English,Lancashire English,England English",
    "",
    "German English,Non native speaker",
    INDIA,
)


def commonvoice_release(root: Path, train: int = 60, dev: int = 12, test: int = 12) -> Path:
    """cv-corpus-<version>/en: {train,dev,test,validated}.tsv and clips/common_voice_en_<n>.mp3
    (48 kHz MP3), with the columns of current releases. Returns the ``en`` folder."""
    en = root / "cv-corpus-17.0-2024-03-15" / "en"
    (en / "clips").mkdir(parents=True)
    header = "\t".join(CV_COLUMNS)
    tables: dict[str, list[str]] = {}
    number = 20_000_000
    for split, count in (("train", train), ("dev", dev), ("test", test)):
        lines = []
        for i in range(count):
            number += 7
            accent = CV_ACCENTS[i % len(CV_ACCENTS)]
            wave, text = speech(i)
            clip = f"common_voice_en_{number}.mp3"
            sf.write(en / "clips" / clip, wave_at(wave, 48000), 48000, format="MP3")
            client = f"{split}{i % 6:02d}".ljust(128, "f")  # a 128-character hash in a release
            row = [client, clip, f"{number:064x}", text.capitalize() + ".", "", "2", "0"]
            row += ["twenties", "male_masculine", accent, "", "en", ""]
            lines.append("\t".join(row))
        tables[split] = lines
    for split, lines in tables.items():
        (en / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n")
    validated = [line for lines in tables.values() for line in lines]
    (en / "validated.tsv").write_text("\n".join([header, *validated]) + "\n")
    (en / "clip_durations.tsv").write_text("clip\tduration[ms]\n")
    return en


def wave_at(wave: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(wave, 16000, rate).astype(np.float32)


# --- L2-ARCTIC folder -------------------------------------------------------------------------

ARCTIC_PROMPTS = {
    "arctic_a0001": "Author of the danger trail, Philip Steels, etc.",
    "arctic_a0002": "Not at this particular case, Tom, apologized Whittemore.",
    "arctic_a0003": "For the twentieth time that evening the two men shook hands.",
    "arctic_a0004": "Lord, but I'm glad to see you again, Phil.",
    "arctic_a0005": "Will we ever forget it.",
    "arctic_a0006": "God bless 'em, I hope I'll go on seeing them forever.",
    "arctic_b0001": "Dandy is a man of many talents.",
    "arctic_b0002": "He was a gentleman, in his way.",
}


def l2arctic_folder(root: Path) -> Path:
    """<root>/<SPEAKER>/{wav,transcript,annotation}/ for the 24 speakers (44.1 kHz WAV), plus
    suitcase_corpus/. ABA lacks one recording, BWC one transcript."""
    for s, speaker in enumerate(sorted(SPEAKER_L1)):
        for folder in ("wav", "transcript", "annotation"):
            (root / speaker / folder).mkdir(parents=True)
        for p, (prompt, text) in enumerate(ARCTIC_PROMPTS.items()):
            wave, _ = speech(s + p)
            if not (speaker == "ABA" and prompt == "arctic_a0002"):
                sf.write(root / speaker / "wav" / f"{prompt}.wav", wave_at(wave, 44100), 44100)
            if not (speaker == "BWC" and prompt == "arctic_b0002"):
                (root / speaker / "transcript" / f"{prompt}.txt").write_text(text)
    suitcase = root / "suitcase_corpus"
    for folder in ("wav", "transcript"):
        (suitcase / folder).mkdir(parents=True)
    sf.write(suitcase / "wav" / "aba.wav", wave_at(speech(0)[0], 44100), 44100)
    (suitcase / "transcript" / "aba.txt").write_text("so the story goes like this")
    (root / "README.md").write_text("L2-ARCTIC v5.0\n")
    return root
