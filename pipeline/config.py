"""Recipes: YAML files safe-loaded into frozen, typed configs, one section per stage.

Every default lives here. A recipe names its corpus *sets*; each set comes from one source
(synthesised commands, the asterisk prompts, a local folder, a `datasets` dataset or an OpenSLR
archive) and may get noisy copies at chosen SNRs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline import typed
from pipeline.errors import RecipeError, UserError
from pipeline.layout import SELECTORS, DataTree, Selector, check_name
from pipeline.typed import ranged

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # a set's manifest and folders
Split = Literal["pool", "target", "dev", "test"]
NoiseRegion = Literal["train", "dev", "test"]


@dataclass(frozen=True)
class NoiseConfig:
    """Noisy copies of a set's clean utterances."""

    # noise names: sonic-pi recordings (vinyl_hiss, 3d_printer, sauna, safari, or any sample
    # file stem), 'white', 'pink', 'babble', or a key of prepare.noise_files or
    # prepare.noise_sources
    types: tuple[str, ...] = ()
    snr_db: tuple[float, ...] = ()  # on active speech
    # 'one': each utterance gets one (type, SNR) drawn at random;
    # 'each_snr': each utterance gets a copy at every SNR (type drawn at random per copy)
    per_utterance: Literal["one", "each_snr"] = "one"
    keep_clean: bool = False  # also keep the clean utterance as a row of its own
    region: NoiseRegion = "train"  # which part of each recording the set may draw from
    # inclusive range of talkers mixed into babble
    babble_talkers: tuple[int, int] = ranged((3, 6), ge=1)


@dataclass(frozen=True)
class RoomConfig:
    """Reverberant copies: each utterance played in a simulated shoebox room before any
    noise is mixed in (pipeline/prepare/corpora/rooms.py)."""

    rt60_s: tuple[float, float] = (0.3, 0.8)  # reverberation time range, seconds
    size_m: tuple[float, float] = (3.0, 8.0)  # range of each floor side, metres
    distance_m: tuple[float, float] = (0.5, 2.5)  # talker to microphone, metres
    # rooms in the bank, split between regions by prepare.noise_regions like noise recordings
    rooms: int = ranged(20, ge=1)
    placements: int = ranged(4, ge=1)  # fixed talker and microphone placements per room
    region: NoiseRegion = "train"  # which share of the bank the set may draw from


@dataclass(frozen=True)
class SynthPart:
    """A slice of a synthesised set: how many commands, in which voices, in which noise."""

    count: int = ranged(ge=1)
    voices: tuple[str, ...]  # accent names (see corpora.voices) or engine voice ids
    noise: NoiseConfig | None = None  # overrides the set's noise block
    room: RoomConfig | None = None  # overrides the set's room block


@dataclass(frozen=True)
class SynthSource:
    kind: Literal["synth"]
    parts: tuple[SynthPart, ...]
    # grammar partition: 'train' (pool), 'heldout' (train templates, sentences never in
    # 'train'), 'dev' and 'test' (held-out templates and slot values)
    text_split: Literal["train", "heldout", "dev", "test"] = "train"
    speaker_split: Literal["train", "heldout", "dev", "test"] = "train"
    # sentences from text files or folders instead of the grammar (pipeline/corpora/texts.py):
    # speech outside the commands' 25 intents, e.g. Debian's fortunes-min,
    # /usr/share/games/fortunes, or another language's (fortunes-es); text_split then takes
    # a fixed hash share of the sentences (train 70%, heldout, dev and test 10% each)
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AsteriskSource:
    kind: Literal["asterisk"]
    part: Literal["guard", "test", "all"] = "test"
    guard_fraction: float = ranged(0.5, ge=0, le=1)  # share of prompts in the guard (dev) part
    # the prompts' language: Debian's asterisk-core-sounds-<language>-wav (audio) and
    # asterisk-core-sounds-<language> (transcripts); installed ones include en, es, fr, it, ru
    language: str = "en"
    sounds_dir: str | None = None  # default: /usr/share/asterisk/sounds/<language>
    # default: /usr/share/doc/asterisk-core-sounds-<language>/core-sounds-<language>.txt.gz
    transcripts: str | None = None
    limit: int | None = ranged(None, ge=1)


@dataclass(frozen=True)
class Keep:
    """Which of a source's utterances a set takes (before `limit`): sets cut from one corpus.

    Every speaker and every utterance id falls in a fixed bucket in [0, 1) (a stable hash, the
    same for any seed), so sets given disjoint ranges share no speaker (or no utterance).
    """

    accents: tuple[str, ...] = ()  # only these accents, as the manifest writes them (any case)
    speakers: tuple[str, ...] = ()  # only these speakers
    speaker_range: tuple[float, float] = (0.0, 1.0)  # [start, end) of the speaker buckets
    utterance_range: tuple[float, float] = (0.0, 1.0)  # [start, end) of the utterance buckets


@dataclass(frozen=True)
class LocalSource:
    kind: Literal["local"]
    path: str = field(metadata={typed.MUST_EXIST: True})  # folder, or a TSV/CSV transcript file
    format: Literal["table", "kaldi"] = "table"
    transcript: str | None = None  # table file inside `path` (default: the only .tsv/.csv)
    accent: str = "unknown"  # accent for rows that carry none
    keep: Keep | None = None
    limit: int | None = ranged(None, ge=1)


@dataclass(frozen=True)
class HFSource:
    kind: Literal["hf"]
    dataset: str  # hub id, a save_to_disk folder, or a folder/file of Parquet
    split: str = "train"
    config_name: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    speaker_column: str | None = None
    accent_column: str | None = None
    id_column: str | None = None
    accent: str = "unknown"
    streaming: bool = False
    keep: Keep | None = None
    limit: int | None = ranged(None, ge=1)
    revision: str | None = None


@dataclass(frozen=True)
class OpenSLRSource:
    kind: Literal["openslr"]
    url: str  # archive URL (http, https or file)
    format: Literal["librispeech", "musan"]
    sha256: str | None = None  # required unless the URL is in corpora.openslr.KNOWN_SHA256
    subset: str | None = None  # e.g. 'train-clean-100' or 'noise'
    accent: str = "unknown"
    keep: Keep | None = None
    limit: int | None = ranged(None, ge=1)
    # what the archive may expand to, checked before extraction (archives.Limits: the
    # defaults admit every LibriSpeech part and MUSAN, and refuse compression bombs)
    max_members: int = ranged(1_000_000, ge=1)
    max_extracted_gb: float = ranged(200.0, gt=0)
    max_expansion: float = ranged(50.0, ge=1)


@dataclass(frozen=True)
class CommonVoiceSource:
    """A Common Voice release as Mozilla distributes it (pipeline.prepare.corpora.commonvoice)."""

    kind: Literal["commonvoice"]
    # the release's language folder (cv-corpus-<version>/en): <split>.tsv files and clips/;
    # checked when the set is prepared, so a recipe loads on machines without the corpus
    path: str
    split: str = "train"  # the TSV: train, dev, test (speaker-disjoint), validated, other, ...
    keep: Keep | None = None  # keep.accents matches the accent the manifest gets
    limit: int | None = ranged(None, ge=1)


@dataclass(frozen=True)
class L2ArcticSource:
    """An L2-ARCTIC folder: <SPEAKER>/wav/*.wav, <SPEAKER>/transcript/*.txt."""

    kind: Literal["l2arctic"]
    path: str  # the release folder holding the speaker folders (checked at prepare)
    # CMU ARCTIC prompt sets: 'a' (arctic_a*, 593 sentences) or 'b' (arctic_b*, 539), so that
    # test sentences can be kept out of training (every speaker reads the same prompts)
    prompts: Literal["all", "a", "b"] = "all"
    keep: Keep | None = None  # keep.speakers: speaker codes; keep.accents: L1s (e.g. vietnamese)
    limit: int | None = ranged(None, ge=1)


@dataclass(frozen=True)
class AugmentSource:
    """Pool speech in the target's own acoustics: training candidates made from two prepared
    sets listed earlier in the recipe (pipeline/prepare/corpora/augment.py). A voice-activity
    detector finds the non-speech stretches of the unlabelled target audio (its noise bank)
    and each target utterance's speech-to-noise ratio; each candidate is a labelled utterance
    of ``speech``, speed-perturbed, mixed with a stretch of the bank at an estimated SNR."""

    kind: Literal["augment"]
    speech: str = "pool"  # the labelled set whose utterances (and transcripts) are reused
    target: str = "target"  # the unlabelled target audio: noise bank and SNRs
    count: int = ranged(1000, ge=1)  # candidates made (select accepts some)
    # speed perturbation: tempo and pitch together, as resampling does (Kaldi's 0.9/1.0/1.1)
    speeds: tuple[float, ...] = ranged((0.9, 1.0, 1.1), ge=0.5, le=2.0)
    min_noise_s: float = ranged(0.1, gt=0)  # shorter non-speech stretches are not kept


Source = (
    SynthSource
    | AsteriskSource
    | LocalSource
    | HFSource
    | OpenSLRSource
    | CommonVoiceSource
    | L2ArcticSource
    | AugmentSource
)


@dataclass(frozen=True)
class SetConfig:
    """One output manifest: data/<recipe>/prepare/manifests/<name>.parquet."""

    name: str
    split: Split
    source: Source
    noise: NoiseConfig | None = None
    room: RoomConfig | None = None  # reverberation, applied before the noise


@dataclass(frozen=True)
class PrepareConfig:
    # every prepared utterance is mono at this rate
    sample_rate: int = ranged(16000, ge=8000, le=96000)
    min_duration_s: float = ranged(0.3, ge=0)
    max_duration_s: float = ranged(30.0, gt=0)  # Whisper's window; longer utterances are rejected
    workers: int = ranged(2, ge=1)
    # fractions of every noise recording reserved for each use, so that test noise is unseen
    noise_regions: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"train": (0.0, 0.6), "dev": (0.6, 0.7), "test": (0.7, 1.0)}
    )
    noise_files: dict[str, str] = field(
        default_factory=dict, metadata={typed.MUST_EXIST: True}
    )  # extra noise recordings by name: a file, or a folder whose audio files are concatenated
    # noise banks downloaded on first use, by name (e.g. MUSAN's noise recordings from OpenSLR):
    # each noisy copy draws one recording of the bank, and regions split the bank by recording
    noise_sources: dict[str, OpenSLRSource] = field(default_factory=dict)
    sonic_pi_dir: str = "/usr/share/sonic-pi/samples"
    sets: tuple[SetConfig, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained recogniser and how it reads audio (shared by score, finetune, evaluate)."""

    name: str = "bundled:whisper-tiny.en"  # or bundled:whisper-base, a hub id, or a folder
    # the language spoken (Whisper's code: en, es, fr, ...): a multilingual Whisper reads and
    # trains with its token after <|startoftranscript|>; an English-only model refuses any
    # other. Text is normalised for it (pipeline.text)
    language: str = "en"
    task: Literal["transcribe", "translate"] = "transcribe"  # multilingual Whisper only
    # a LoRA adapter folder (a LoRA run's finetune/<run>/model/adapter) applied to `name` when
    # it is loaded: one user's adapter on the shared model; None reads `name` as it is
    adapter: str | None = field(default=None, metadata={typed.MUST_EXIST: True})
    # Whisper input layout: 'standard' (30 s padding), 'short' (encoder context cut to
    # context_s) or 'packed' (several utterances per 30 s window); see pipeline.models.whisper
    layout: Literal["standard", "short", "packed"] = "standard"
    context_s: float = ranged(8.0, gt=0, le=30)
    pack_gap_s: float = ranged(1.0, ge=0, lt=30)  # silence between packed utterances
    # generation cap per second of audio (stops repetition loops)
    tokens_per_s: float = ranged(6.0, gt=0)
    # Whisper: a block of up to 8 tokens repeated this many times in a row is a loop, cut to
    # one copy; a window of one utterance stops generating there, a packed window decodes on
    # (its later utterances follow). 0: loops run to the tokens_per_s cap, in a packed window
    # the whole window's. 4 chosen on the dev sets (recipes/RESULTS.md)
    loop_repeats: int = ranged(4, ge=0)
    # attention of each new token while generating: 'fp32' (matmuls in fp32; the cross-
    # attention keys and values converted once per batch) or 'sdpa' (PyTorch's kernel, which
    # on a CPU in bf16 spends most of a greedy step there). Longer queries (the encoder,
    # training, teacher forcing) always go to SDPA. Chosen by benchmarks/decode_attention.py
    decode_attention: Literal["fp32", "sdpa"] = "fp32"
    # bf16 autocast outside training (decoding; the score's encoder and loss passes): 'auto'
    # where the machine computes bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX)
    bf16: Literal["auto"] | bool = "auto"
    batch_size: int = ranged(16, ge=1)
    threads: int | None = ranged(None, ge=1)  # torch threads (default: torch's choice)
    # what decodes in evaluate and the pseudo-labeller: 'torch' (the model as trained), or
    # 'ct2': a Whisper model converted once (cached by its weights' fingerprint) and read by
    # CTranslate2's batched greedy search, each request in its own 30 s window, at
    # ct2_compute_type (pipeline/models/ct2.py). Other layouts (packed, short) stay with torch
    engine: Literal["torch", "ct2"] = "torch"
    ct2_compute_type: Literal["int8", "int8_float32", "int8_bfloat16", "float32", "bfloat16"] = (
        "int8"
    )

    def key(self, decodes: bool) -> dict:
        """The settings that a stage's output depends on, for its key: a stage that generates
        no transcript leaves out DECODING_FIELDS, so changing one re-decodes without scoring
        or training again. The torch engine leaves the engine fields out (keys taken before
        there were engines stay valid)."""
        fields = typed.to_dict(self)
        if self.engine == "torch":
            fields = {k: v for k, v in fields.items() if k not in ENGINE_FIELDS}
        return fields if decodes else {k: v for k, v in fields.items() if k not in DECODING_FIELDS}


# ModelConfig fields that only change generated transcripts (not embeddings, losses or training)
ENGINE_FIELDS = ("engine", "ct2_compute_type")
DECODING_FIELDS = ("tokens_per_s", "loop_repeats", "decode_attention", *ENGINE_FIELDS)


@dataclass(frozen=True)
class ScoreConfig:
    sets: tuple[str, ...] = ()  # default: every 'pool' and 'target' set
    # embeddings and losses: 'short' gives each utterance a window of its own (the encoder
    # context cut to model.context_s; longer utterances get 30 s), so its scores depend on
    # nothing else in the pool: 'packed' windows are faster but an utterance's pooled states
    # then carry its window neighbours' (cosine 0.31 to its own window's, benchmarks/
    # RESULTS.md), and neighbours follow the pool's row order. hypotheses: 'short' context
    layout: Literal["standard", "short", "packed"] = "short"
    decode_layout: Literal["standard", "short", "packed"] = "short"
    hypotheses: bool = True  # greedy transcripts for the wer_filter baseline
    # teacher-forced NLL of each transcript (the 'difficulty' estimator's input); None: only
    # when select.estimators has 'difficulty'
    losses: bool | None = None
    batch_size: int = ranged(32, ge=1)
    shard_size: int = ranged(512, ge=1)  # utterances per resumable piece
    # pseudo-labels of the target sample (pipeline/generate/pseudo.py): the teacher's greedy
    # transcript, read one request per 30 s window, and its agreement with pseudo_samples
    # transcripts drawn at pseudo_temperature. None: when select.pseudo_labels asks for them
    pseudo_labels: bool | None = None
    pseudo_samples: int = ranged(4, ge=1)
    pseudo_temperature: float = ranged(0.7, gt=0)
    # the teacher: None is model.name; a fine-tuned model's folder (finetune/<run>/model)
    # gives a second round with the adapted model as teacher
    pseudo_teacher: str | None = None


@dataclass(frozen=True)
class SelectConfig:
    pool: str = "pool"  # the labelled pool set
    target: str | None = "target"  # the unlabelled target-sample set
    budget: int = ranged(300, ge=1)  # utterances per subset
    # how subsets are drawn, each training one system of the comparison (layout.SELECTORS)
    selectors: tuple[Selector, ...] = SELECTORS
    # a labelled set from the target condition (a user's transcribed target requests, e.g.
    # the size of dev_target, disjoint from every test set): 'labelled_target' trains on it
    # alone, 'rsft_labelled' on it plus rsft's draw of the rest of the budget from the pool
    labelled_set: str | None = None
    # a prepared set of generated candidates (source kind 'augment'): 'rsft_aug' trains on
    # rsft's draw plus the candidates accepted by one pass of rejection sampling on their own
    # target-vs-candidates density ratio; 'rsft_aug_all' on rsft's draw plus every candidate
    augment_set: str | None = None
    # pseudo-labels of the target sample (score writes them): 'rsft_pl' trains on rsft's draw
    # plus the target audio whose pseudo-label one pass of rejection accepts, with probability
    # reliability ** pseudo_power (reliability: agreement of sampled transcripts with the
    # greedy one; pipeline/generate/pseudo.py); 'rsft_pl_all' takes every pseudo-label;
    # 'rsft_gen' and 'rsft_gen_all' take both generators' data
    pseudo_labels: bool = False
    pseudo_power: float = ranged(1.0, gt=0)
    # the unlabelled sets whose audio is pseudo-labelled (default: select.target alone), e.g.
    # real recorded requests beside the target sample; only the generators read them
    pseudo_sets: tuple[str, ...] = ()
    # generated candidates' rejection: M = max w when None, else this quantile of w (clipping
    # the weights above it; the clipped mass is reported)
    generated_cap_quantile: float | None = ranged(None, gt=0, le=1)
    # rsft's log-ratio: the sum of these estimators' log-ratios
    estimators: tuple[Literal["classifier", "groups", "difficulty"], ...] = ("classifier",)
    group_columns: tuple[str, ...] = ("accent", "noise", "snr_db")  # groups and diagnostics
    # the metadata the oracle matches to the target's (None: group_columns), e.g. [accent]
    # when the target's noise is one the pool never heard: an accent-only groups selection
    oracle_columns: tuple[str, ...] | None = None
    group_weights: dict[str, float] = field(
        default_factory=dict
    )  # 'a|b|c' -> weight; {} = balanced
    folds: int = ranged(5, ge=2)  # cross-fitting folds of the classifier
    # inverse L2 strength of the logistic regression, and the encoder layer whose pooled
    # states it reads (0: the first block's input; -1: the final layer). None: chosen by the
    # classifier's cross-fitted log loss (C among 0.01, 0.1, 1; every scored layer)
    C: float | None = ranged(None, gt=0)
    layer: int | None = None
    pca_dim: int | None = ranged(None, ge=1)
    beta: float = 1.0  # difficulty tilt exp(beta * loss)
    # rsft's and oracle's draw of `budget` rows: 'fixed_budget' (exact: row x is selected with
    # probability min(1, c w(x)), c set so that the budget is met; pipeline/select/fixed_budget.py)
    # or 'rejection' (accept when u < w/M, in passes until the budget is met: exact only
    # within the first pass, later passes drift toward low-weight rows)
    sampler: Literal["fixed_budget", "rejection"] = "fixed_budget"
    # rejection: M = max w when None; a quantile of w trades exactness for acceptance, and
    # clips most of the mass when the target is rarer than 1 - quantile of the pool
    cap_quantile: float | None = ranged(None, gt=0, le=1)
    # wer_filter keeps utterances at or below this pretrained WER
    wer_threshold: float = ranged(0.3, ge=0)


@dataclass(frozen=True)
class EvaluateConfig:
    sets: tuple[str, ...] = ()  # prepared sets to score; default: every 'test' set
    group_by: tuple[str, ...] = ("accent", "noise", "snr_db")
    bootstrap: int = ranged(1000, ge=1)  # resamples for confidence intervals
    limit: int | None = ranged(None, ge=1)  # utterances per set, for quick looks
    # model.layout 'packed': utterances of one group (group_by) are decoded together in 30 s
    # windows and each window's transcript is cut per utterance by aligning it to the joined
    # references ('references': long-form scoring, group WER exact) or by Whisper's segment
    # timestamps ('timestamps': no references used, but segments spanning two utterances go
    # to one of them)
    packed_split: Literal["references", "timestamps"] = "references"
    # a layout per set, over model.layout (e.g. real speech always in the standard 30 s one)
    set_layouts: dict[str, Literal["standard", "short", "packed"]] = field(default_factory=dict)
    # sets whose references are also scored by teacher forcing (Whisper): the mean NLL per
    # token, in nats, in the set's layout. A finer measure of forgetting than WER on a small
    # set of real speech: `rsft compare` gives the paired difference (recipes/RESULTS.md)
    token_nll: tuple[str, ...] = ()
    # WER and CER without diacritics on either side (model.language other than en; English
    # always drops them): for references written without them, like the asterisk prompts'
    strip_diacritics: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    """Stage 4: fine-tune the recipe's model on one selected subset with Accelerate."""

    subset: str = "rsft"  # select/<subset>/subset.parquet trains: a selector, or a variant's
    steps: int = ranged(150, ge=1)  # optimizer steps (each of grad_accum batches)
    batch_size: int = ranged(8, ge=1)  # utterances per batch per process (packed: before packing)
    grad_accum: int = ranged(1, ge=1)  # batches per optimizer step
    lr: float = ranged(1e-5, gt=0)  # peak learning rate (AdamW)
    warmup_steps: int = ranged(10, ge=0)  # linear warmup, then linear decay to 0 at `steps`
    weight_decay: float = ranged(0.0, ge=0)
    # 'full'; 'encoder_frozen' (Whisper: decoder and embeddings train; CTC: only the head);
    # 'decoder_only' (Whisper: decoder blocks only, embeddings and output projection frozen);
    # 'decoder_frozen' (Whisper: the encoder alone trains: the model hears the new accents and
    # noise while its language model, and so its text on other speech, stays as it was);
    # 'decoder_lm_frozen' (Whisper: the decoder's language model, i.e. its embeddings,
    # self-attention and feed-forward layers, frozen; the encoder and the decoder's
    # cross-attention train); 'feature_encoder_frozen' (the convolutional front end frozen:
    # wav2vec2's feature encoder, Whisper's two conv layers); 'lora' (peft LoRA adapters on
    # lora_modules, merged into the saved model so it loads with from_pretrained)
    train: Literal[
        "full",
        "encoder_frozen",
        "decoder_only",
        "decoder_frozen",
        "decoder_lm_frozen",
        "feature_encoder_frozen",
        "lora",
    ] = "full"
    lora_rank: int = ranged(16, ge=1)
    lora_alpha: float = ranged(32.0, gt=0)
    lora_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    # Whisper input layout for training: 'packed' puts several utterances (transcripts
    # concatenated) in each 30 s window, so the model sees what it was trained on at a fraction
    # of the cost of 'standard' (one utterance per 30 s); 'short' cuts the context to
    # model.context_s. CTC models ignore it.
    layout: Literal["standard", "short", "packed"] = "packed"
    # packed layout: silence between training utterances (None: model.pack_gap_s), and how a
    # batch is packed ('in_order' closes a window when the next utterance does not fit;
    # 'first_fit' places the longest first, each in the first window with room: fuller windows)
    pack_gap_s: float | None = ranged(None, ge=0, lt=30)
    packing: Literal["in_order", "first_fit"] = "first_fit"
    # packed layout: this many utterances of each batch are trained alone in a 30 s window of
    # their own, as an assistant hears a request (and as evaluate reads it in the standard
    # layout): a model that only saw full packed windows reads one command followed by 25 s
    # of silence worse (recipes/RESULTS.md). Each costs one more window per step
    single_windows: int = ranged(0, ge=0)
    # utterances are drawn batch_size at a time; with batch_seconds, instead, until their audio
    # reaches that many seconds (a duration budget per batch, so packed windows come out full)
    batch_seconds: float | None = ranged(None, gt=0)
    # standard/short layouts: sort each run of 50 batches by duration (less padding)
    group_by_length: bool = True
    # Whisper labels: the manifest's text as it is ('raw': cased and punctuated, as Whisper
    # writes) or the shared normaliser's form ('normalized': lower case, no punctuation)
    labels: Literal["raw", "normalized"] = "raw"
    # bf16 autocast (CPU and recent GPUs); fp16 with loss scaling (GPUs only); 'auto': bf16
    # on a GPU that has it (else fp16) and on a CPU with bf16 instructions (AVX512-BF16, AMX),
    # fp32 ('no') on other CPUs, where bf16 is emulated and several times slower
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu: bool = False  # train on the CPU even when a GPU is present
    save_every: int = ranged(50, ge=1)  # steps between checkpoints (accelerator.save_state)
    # dev-set validation: every eval_every optimizer steps (and at the last) the main process
    # decodes eval_sets in the standard 30 s layout; the saved model is the one with the lowest
    # WER on the FIRST set (0: no validation, the last step's model is saved)
    eval_every: int = ranged(0, ge=0)
    eval_sets: tuple[str, ...] = ("dev_target",)  # prepared sets (prepare/manifests/<name>)
    # utterances per dev set, the first by id (None: all)
    eval_limit: int | None = ranged(100, ge=1)
    # stop after this many evaluations without a new best (0: never stop)
    patience: int = ranged(0, ge=0)
    # data order, initialisation of anything random; default: recipe seed
    seed: int | None = ranged(None, ge=0)
    max_bad_steps: int = ranged(5, ge=1)  # stop after this many NaN/inf losses in a row
    # forgetting control (measured in recipes/RESULTS.md):
    # share of each batch drawn at random from the labelled pool
    replay_fraction: float = ranged(0.0, ge=0, lt=1)
    # the prepared set replayed (None: the pool, select.pool), e.g. speech outside the
    # target's text domain, so the model keeps hearing words its training grammar lacks
    replay_set: str | None = None
    # share of the training files (a fixed draw from the seed and file name) read through a
    # telephone band, resampled to 8 kHz and back: real speech often arrives so (the asterisk
    # prompts are 8 kHz), and synthetic training audio is all wideband
    narrowband_fraction: float = ranged(0.0, ge=0, le=1)
    # weight of KL(frozen pretrained || model) on output tokens
    distill_weight: float = ranged(0.0, ge=0)
    # weight of the squared distance to the pretrained weights (L2-SP)
    l2_weight: float = ranged(0.0, ge=0)
    # the saved model's weights: interpolate * trained + (1 - interpolate) * pretrained
    # (WiSE-FT weight-space ensembling); 1.0 saves the trained weights as they are
    interpolate: float = ranged(1.0, gt=0, le=1)
    # Whisper: the weight of the trained decoder in that mix (its blocks, token embeddings and
    # the tied output projection); None: `interpolate`. The accent and noise are heard in the
    # encoder, while the decoder drifts toward the training text, which is what real speech
    # loses (recipes/RESULTS.md). The mix is applied after training: changing either weight
    # mixes the kept trained weights again, without training again
    interpolate_decoder: float | None = ranged(None, ge=0, le=1)
    # a dev set of real speech watched during training: the saved model is the best on the
    # first eval set among evaluations whose guard WER is within guard_tolerance (absolute)
    # of the pretrained model's (evaluated at step 0); the guard set joins eval_sets
    guard_set: str | None = None
    guard_tolerance: float = ranged(0.005, ge=0)


@dataclass(frozen=True)
class ReportConfig:
    """Stage 6: which test sets play which role in the comparison (None: leave the role out).

    A named set that the recipe or the evaluate runs lack is skipped with a logged reason.
    """

    target_set: str | None = "test_target"  # the target condition: the headline WER
    clean_set: str | None = "test_clean"  # clean speech: WER per accent
    noisy_set: str | None = "test_noisy"  # noisy speech: WER per SNR, 0 dB apart
    real_set: str | None = "asterisk_test"  # real human speech: forgetting
    # real human speech in the target condition (its noise types and SNRs, from the test
    # region of each recording): what users of the adapted recogniser meet
    real_target_set: str | None = "asterisk_target"
    reference: str = "rsft"  # system tested against every other one (paired bootstrap)
    # resamples for intervals and paired tests (over speakers, and seeds); p floor 1/(B+1)
    bootstrap: int = ranged(10000, ge=1)


@dataclass(frozen=True)
class ExperimentConfig:
    """The comparison (``rsft experiment``): each selector's subset fine-tuned with the same
    finetune settings at the same budget, over seeds, plus a budget sweep; then evaluate and
    report. ``--quick`` (make demo) runs only the quick_* part."""

    systems: tuple[Selector, ...] = SELECTORS  # each selector's subset, fine-tuned
    seeds: tuple[int, ...] = ranged((0, 1, 2), ge=0)  # selection draw and training order
    sweep_budgets: tuple[int, ...] = ranged((100, 1000), ge=1)  # besides select.budget
    sweep_systems: tuple[Selector, ...] = ("rsft", "random")
    quick_systems: tuple[Selector, ...] = ("rsft", "random")
    quick_seeds: tuple[int, ...] = ranged((0,), ge=0)
    # --quick: the systems other than rsft (the baselines) are read on these test sets only;
    # () reads them on every test set. A later run without --quick reads the others
    quick_baseline_sets: tuple[str, ...] = ()
    # --quick: every system, the pretrained model included, is read on these test sets only
    # (() reads every test set); a later run without --quick reads the others
    quick_sets: tuple[str, ...] = ()
    # every system, the pretrained model included, is read in this layout: 'standard' is one
    # request per 30 s window, as an assistant hears it. 'packed' (several test commands per
    # window, each window's transcript cut by alignment to the joined references) is the
    # best case for segmentation and is not how a deployed model is read
    eval_layout: Literal["standard", "short", "packed"] = "standard"
    # a second reading of every system, the pretrained model included, in this layout (runs
    # named <run>@<layout>): the report gives it a table of its own, never mixed with the first
    second_layout: Literal["standard", "short", "packed"] | None = None
    # silence between commands in their packed windows; None: the gap they were trained with
    # (finetune.pack_gap_s, else model.pack_gap_s). Read with wider gaps than in training, a
    # fine-tuned model ends some windows early and their last commands come out empty
    # (recipes/RESULTS.md)
    eval_pack_gap_s: float | None = ranged(None, ge=0, lt=30)


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int = ranged(0, ge=0)
    data_dir: str | None = None  # default: data/<name>
    description: str = ""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def root(self) -> Path:
        return Path(self.data_dir or f"data/{self.name}")

    @property
    def tree(self) -> DataTree:
        """Every path the stages read and write under the data root."""
        return DataTree(self.root)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe file, apply ``section.key=value`` overrides, and check it."""
    return build_recipe(read_recipe(path), overrides)


def read_recipe(path: str | Path) -> dict:
    """A recipe file's mapping, safe-loaded and not yet checked."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise RecipeError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    return data


def build_recipe(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A checked Recipe from a recipe's mapping and ``section.key=value`` overrides."""
    for item in overrides:
        data = apply_override(data, item)
    recipe = typed.build(Recipe, data)
    _check(recipe)
    return recipe


def apply_override(data: dict, item: str) -> dict:
    """Apply one ``a.b.c=value`` override; list items are addressed by index or by name."""
    if "=" not in item:
        raise RecipeError(f"--set {item}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise RecipeError(f"--set {item}: value is not valid YAML") from None
    data = _copy(data)
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        node = _child(node, key, where, create=True)
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"--set {item}: {'.'.join(keys[:-1])} is not a section")
    return data


def _child(node: Any, key: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, where)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {where}: parent is not a section")
    if key not in node or node[key] is None:
        node[key] = {}
    return node[key]


def _list_index(items: list, key: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        index = int(key)
        if -len(items) <= index < len(items):
            return index
        raise RecipeError(f"--set {where}: index {index} out of range ({len(items)} items)")
    for index, entry in enumerate(items):
        if isinstance(entry, dict) and entry.get("name") == key:
            return index
    raise RecipeError(f"--set {where}: no item named {key!r}")


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _check(recipe: Recipe) -> None:
    """Checks that span several keys."""
    _check_name(recipe.name, "name")
    prep = recipe.prepare
    names = [s.name for s in prep.sets]
    for i, name in enumerate(names):
        if names.count(name) > 1:
            raise RecipeError(f"prepare.sets: set name {name!r} appears more than once")
        if not SET_NAME.fullmatch(name):  # a '.' would split a --set path
            raise RecipeError(
                f"prepare.sets[{i}].name {name!r}: use letters, digits, '_' or '-', starting "
                "with a letter or digit"
            )
    for name in prep.noise_sources:
        _check_name(name, f"prepare.noise_sources.{name}")
    if recipe.model.loop_repeats == 1:
        raise RecipeError("model.loop_repeats: 0 (off) or at least 2 copies")
    ft = recipe.finetune
    if ft.guard_set is not None and not ft.eval_every:
        raise RecipeError("finetune.guard_set: needs finetune.eval_every > 0 (it is watched then)")
    second = recipe.experiment.second_layout
    if second is not None and second == recipe.experiment.eval_layout:
        raise RecipeError("experiment.second_layout: the same as experiment.eval_layout")
    for key in ("labelled_set", "augment_set"):
        name = getattr(recipe.select, key)
        if name is not None and name not in names:
            raise RecipeError(f"select.{key}: {name!r} is not a prepared set")
    split_of = {s.name: s.split for s in prep.sets}
    for name in recipe.select.pseudo_sets:
        if split_of.get(name) != "target":
            raise RecipeError(f"select.pseudo_sets: {name!r} is not a prepared 'target' set")
    for key in ("quick_baseline_sets", "quick_sets"):
        for name in getattr(recipe.experiment, key):
            if name not in names:
                raise RecipeError(f"experiment.{key}: {name!r} is not a prepared set")
    for i, s in enumerate(prep.sets):
        blocks = [s.noise] + [p.noise for p in getattr(s.source, "parts", ())]
        for noise in blocks:
            if noise is not None and noise.babble_talkers[0] > noise.babble_talkers[1]:
                raise RecipeError(
                    f"prepare.sets[{i}]: noise.babble_talkers {list(noise.babble_talkers)}: "
                    "need [fewest, most]"
                )
    for i, s in enumerate(prep.sets):
        if isinstance(s.source, AugmentSource):
            for key in ("speech", "target"):
                name = getattr(s.source, key)
                if name not in names[:i]:
                    raise RecipeError(
                        f"prepare.sets[{i}].source.{key}: {name!r} is not a set listed before "
                        f"{s.name!r}"
                    )
            if s.split == "target":
                raise RecipeError(f"prepare.sets[{i}]: generated candidates are labelled")
    for region, (lo, hi) in prep.noise_regions.items():
        if not 0.0 <= lo < hi <= 1.0:
            raise RecipeError(f"prepare.noise_regions.{region}: need 0 <= start < end <= 1")
    if prep.min_duration_s >= prep.max_duration_s:
        raise RecipeError("prepare.min_duration_s: must be below prepare.max_duration_s")
    for i, s in enumerate(prep.sets):
        keep = getattr(s.source, "keep", None)
        for key in ("speaker_range", "utterance_range"):
            lo, hi = getattr(keep, key) if keep else (0.0, 1.0)
            if not 0.0 <= lo < hi <= 1.0:
                where = f"prepare.sets[{i}].source.keep.{key}"
                raise RecipeError(f"{where}: need 0 <= start < end <= 1")
        blocks = [("noise", s.noise)]
        if isinstance(s.source, SynthSource):
            blocks += [(f"source.parts[{j}].noise", p.noise) for j, p in enumerate(s.source.parts)]
        for key, noise in blocks:
            if noise is None:
                continue
            if noise.region not in prep.noise_regions:
                raise RecipeError(f"prepare.sets[{i}].{key}.region: {noise.region!r} not defined")
            if noise.types and not noise.snr_db:
                raise RecipeError(f"prepare.sets[{i}].{key}.snr_db: needed when types are given")
        rooms = [("room", s.room)]
        if isinstance(s.source, SynthSource):
            rooms += [(f"source.parts[{j}].room", p.room) for j, p in enumerate(s.source.parts)]
        for key, room in rooms:
            if room is not None:
                _check_room(room, f"prepare.sets[{i}].{key}", prep)


def _check_room(room: RoomConfig, where: str, prep: PrepareConfig) -> None:
    if room.region not in prep.noise_regions:
        raise RecipeError(f"{where}.region: {room.region!r} not defined")
    for key, low in (("rt60_s", 0.05), ("size_m", 1.0), ("distance_m", 0.1)):
        lo, hi = getattr(room, key)
        if not low <= lo <= hi:
            raise RecipeError(f"{where}.{key}: need {low} <= low <= high, got [{lo}, {hi}]")


def _check_name(name: str, where: str) -> None:
    """Names that become paths under the data root, checked as the recipe loads."""
    try:
        check_name(name, where)
    except UserError as err:
        raise RecipeError(str(err)) from None


def with_prepare(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy of ``recipe`` with prepare fields changed (configs are frozen)."""
    return replace(recipe, prepare=replace(recipe.prepare, **changes))
