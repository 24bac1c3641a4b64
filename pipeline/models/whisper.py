"""Whisper behind the SpeechModel interface, in three input layouts.

Whisper was trained on 30 s windows; voice commands last a few seconds. Layouts:
  standard  every utterance padded to 30 s (what the model expects; slow on short audio)
  short     the encoder context cut to ``context_s`` (positional embeddings sliced); utterances
            longer than the context fall back to the standard layout
  packed    several utterances, separated by ``pack_gap_s`` of silence, share one 30 s window
            (what Whisper's own training windows look like); transcripts are split back by
            the timestamps Whisper predicts, embeddings by each utterance's frames
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from pipeline.errors import UserError
from pipeline.models.base import SAMPLE_RATE, Batch, SpeechModel, TrainingLayout

try:  # the attention interfaces of transformers 4.53 and later
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError:  # older transformers: decoding keeps SDPA
    AttentionInterface = None

CHUNK_S = 30.0  # Whisper's window
FRAMES_PER_S = 50  # encoder positions per second (10 ms mel hop, then stride 2)
MEL_FRAMES_PER_S = 100  # log-mel frames per second (10 ms hop)
LAYOUTS = ("standard", "short", "packed")


MAX_LOOP_PERIOD = 8  # tokens in the longest block that a loop is checked for


def loop_at(tokens: Sequence[int], start: int, repeats: int) -> tuple[int, int]:
    """(period, copies) of the shortest block of at most MAX_LOOP_PERIOD tokens that repeats
    at least ``repeats`` times in a row from ``tokens[start]``; (0, 0) if none does."""
    for period in range(1, MAX_LOOP_PERIOD + 1):
        if start + period * repeats > len(tokens):
            break
        block, copies = list(tokens[start : start + period]), 1
        while list(tokens[start + copies * period : start + (copies + 1) * period]) == block:
            copies += 1
        if copies >= repeats:
            return period, copies
    return 0, 0


def collapse_loops(tokens: Sequence[int], repeats: int) -> list[int]:
    """``tokens`` with every loop (one block of up to MAX_LOOP_PERIOD tokens repeated
    ``repeats`` times or more in a row) cut to one copy, wherever it stands: in a packed
    window the transcript may go on after a loop, with the utterances that follow it."""
    out, at = [], 0
    while at < len(tokens):
        period, copies = loop_at(tokens, at, repeats)
        if copies:
            out.extend(tokens[at : at + period])
            at += period * copies
        else:
            out.append(tokens[at])
            at += 1
    return out


class LoopStop(transformers.StoppingCriteria):
    """Stops each generated row as soon as its last tokens repeat one block (of up to
    MAX_LOOP_PERIOD tokens) ``repeats`` times: a repetition loop, which would otherwise run
    to the token budget and hold up its whole batch."""

    def __init__(self, repeats: int, prompt_len: int):
        self.repeats, self.prompt_len = repeats, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated = input_ids[:, self.prompt_len :]
        for period in range(1, MAX_LOOP_PERIOD + 1):
            span = period * self.repeats
            if span > generated.shape[1]:
                break
            tail = generated[:, -span:].reshape(-1, self.repeats, period)
            done |= (tail == tail[:, :1]).all(dim=2).all(dim=1)
        return done


DECODE_ATTENTION = "rsft_decode_step"  # the name it is registered under with transformers


class _Fp32Copies:
    """fp32 copies of the cross-attention keys and values of one generate call: they stay
    the same at every step, so each is converted once (by the tensor's identity)."""

    def __init__(self, cross_attention: set[int]):
        self.cross_attention = cross_attention  # ids of the decoder's encoder_attn modules
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        if id(module) not in self.cross_attention:
            return tensor.float()
        held = self.copies.get(id(tensor))
        if held is None or held[0] is not tensor:
            held = self.copies[id(tensor)] = (tensor, tensor.float())
        return held[1]


_STEP_COPIES: contextvars.ContextVar[_Fp32Copies | None] = contextvars.ContextVar(
    "rsft_step_copies", default=None
)


def decode_step_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """Attention for a transformers model: one query (a greedy step) inside
    ``Whisper._fp32_step_attention`` in fp32 matmuls; anything else by SDPA, as before.

    PyTorch's CPU flash kernel handles a single bf16 query over 1,500 encoder frames at
    about a third of the speed of two fp32 matmuls, and rounds the attention weights to
    bf16 on the way; here nothing is rounded until the output.
    """
    copies = _STEP_COPIES.get()
    single = query.shape[2] == 1 and key.shape[1] == query.shape[1]
    if copies is None or not single or module.training:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    with torch.autocast(query.device.type, enabled=False):
        keys, values = copies.get(module, key), copies.get(module, value)
        scores = torch.matmul(query.float(), keys.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            mask = attention_mask[..., : keys.shape[-2]]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask.float()
        out = torch.matmul(torch.softmax(scores, dim=-1), values).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


if AttentionInterface is not None:
    AttentionInterface.register(DECODE_ATTENTION, decode_step_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@dataclass(frozen=True)
class Window:
    """Utterances packed into one window, and where each one sits (seconds)."""

    members: list[int]
    spans: list[tuple[float, float]]
    wave: np.ndarray


class Whisper(SpeechModel):
    decoding_revision = 2  # 2: packed windows decode on past a loop, every loop cut to one copy
    exports_to_ct2 = True

    def __init__(
        self,
        model,
        processor,
        name: str,
        layout: str = "standard",
        context_s: float = 8.0,
        pack_gap_s: float = 1.0,
        tokens_per_s: float = 6.0,
        bf16: bool = False,
        loop_repeats: int = 0,
        decode_attention: str = "sdpa",
        language: str = "en",
        task: str = "transcribe",
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        self.model = model.train(False)  # inference mode: no dropout
        self.processor = processor
        self.name = name
        self.layout = layout
        self.configured_context_s = context_s
        self.context_s = min(context_s, CHUNK_S) if layout == "short" else CHUNK_S
        self.pack_gap_s = pack_gap_s
        self.tokens_per_s = tokens_per_s  # caps generation: loops stop at a length speech can have
        self.bf16 = bf16  # autocast outside training: decoding, encoder and loss passes
        self.loop_repeats = loop_repeats  # 0: loops run to the tokens_per_s cap
        self.decode_attention = decode_attention  # 'fp32' or 'sdpa' (ModelConfig)
        gen = model.generation_config
        self.language, self.task = language, task
        self.multilingual = bool(getattr(gen, "is_multilingual", False))
        # what every transcript starts with, in reading and in training alike
        self.prefix = [
            gen.decoder_start_token_id,
            *self._language_tokens(gen),
            gen.no_timestamps_token_id,
        ]
        self.eot = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]

    def _language_tokens(self, gen) -> list[int]:
        """<|language|><|task|> for a multilingual model; an English-only model has none and
        refuses another language or task."""
        if not self.multilingual:
            if self.language != "en" or self.task != "transcribe":
                raise UserError(
                    f"model {self.name!r} is English-only: model.language {self.language!r} "
                    f"and task {self.task!r} need a multilingual Whisper (bundled:whisper-base)"
                )
            return []
        languages = getattr(gen, "lang_to_id", None) or {}
        token = f"<|{self.language}|>"
        if token not in languages:
            known = " ".join(sorted(t.strip("<|>") for t in languages))
            raise UserError(
                f"model.language {self.language!r}: not a language of {self.name} ({known})"
            )
        return [languages[token], gen.task_to_id[self.task]]

    # -- features and context -------------------------------------------------------------

    def features(self, waves: Sequence[np.ndarray], seconds: float) -> torch.Tensor:
        """Log-mel features padded or cut to ``seconds``."""
        feats = self.processor.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding="max_length",
            max_length=int(round(seconds * SAMPLE_RATE)),
            truncation=True,
        ).input_features
        return feats.to(self.model.device, self.model.dtype)

    @contextlib.contextmanager
    def context(self, seconds: float) -> Iterator[None]:
        """Run the encoder on ``seconds`` of input by slicing its positional embeddings."""
        encoder = self.model.get_encoder()
        positions = int(round(seconds * FRAMES_PER_S))
        full, config = encoder.embed_positions, self.model.config
        if positions == full.num_embeddings:
            yield
            return
        saved = config.max_source_positions
        encoder.embed_positions = torch.nn.Embedding.from_pretrained(
            full.weight[:positions], freeze=True
        )
        config.max_source_positions = positions
        try:
            yield
        finally:
            encoder.embed_positions, config.max_source_positions = full, saved

    def _groups(self, waves: Sequence[np.ndarray]) -> list[tuple[float, list[int]]]:
        """(context seconds, member indices): short layout sends long utterances to 30 s."""
        if self.layout != "short":
            return [(CHUNK_S, list(range(len(waves))))]
        fits = [i for i, w in enumerate(waves) if len(w) <= self.context_s * SAMPLE_RATE]
        long = [i for i in range(len(waves)) if i not in set(fits)]
        return [(s, g) for s, g in ((self.context_s, fits), (CHUNK_S, long)) if g]

    # -- transcription ------------------------------------------------------------------

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        if self.layout == "packed":
            return self._transcribe_packed(waves)
        out = [""] * len(waves)
        for seconds, members in self._groups(waves):
            group = [waves[i] for i in members]
            longest = max(len(w) for w in group) / SAMPLE_RATE
            with self.context(seconds):
                ids = self._generate(self.features(group, seconds), self._budget(longest))
            for i, text in zip(members, self._decode(ids), strict=True):
                out[i] = text
        return out

    @torch.inference_mode()
    def transcribe_joined(self, windows: Sequence[Window]) -> list[str]:
        """One greedy transcript per packed window (no timestamps): its utterances' words in
        order, for a caller that splits them with the references (long-form evaluation)."""
        feats = self.features([w.wave for w in windows], CHUNK_S)
        speech_s = max(sum(e - s for s, e in w.spans) for w in windows)
        return self._decode(self._generate(feats, self._budget(speech_s), stop_loops=False))

    @torch.inference_mode()
    def transcribe_scored(self, waves: Sequence[np.ndarray]) -> tuple[list[str], np.ndarray]:
        """Greedy transcripts and their mean token log-probability.

        The log-probability comes from one teacher-forced pass over the hypothesis, which
        gives the same numbers as generate's scores at a fraction of their cost.
        """
        texts = self.transcribe(waves)
        if self.layout == "packed":  # window-level scores do not belong to one utterance
            return texts, np.full(len(waves), np.nan, dtype=np.float32)
        return texts, -self.analyse(waves, texts)[1]

    @torch.inference_mode()
    def sample(self, wave: np.ndarray, n: int, temperature: float, seed: int) -> list[str]:
        """``n`` transcripts of one utterance drawn at ``temperature`` (ancestral sampling,
        no top-k), from a generator seeded by ``seed`` alone: what is drawn for an utterance
        depends on nothing else in its set. Pseudo-labels' reliability compares them."""
        seconds, _ = self._groups([wave])[0]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            with self.context(seconds):
                feats = self.features([wave], seconds)
                ids = self._generate(
                    feats,
                    self._budget(len(wave) / SAMPLE_RATE),
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    num_return_sequences=n,
                )
        finally:
            torch.random.set_rng_state(generator_state)
        return self._decode(ids)

    def _budget(self, speech_s: float, extra: int = 0) -> int:
        """New tokens allowed for ``speech_s`` of speech: caps repetition loops."""
        return min(440, math.ceil(speech_s * self.tokens_per_s) + 8 + extra)

    def _generate(
        self, feats: torch.Tensor, max_new_tokens: int, stop_loops: bool = True, **kwargs
    ) -> torch.Tensor:
        """Greedy decoding; with ``stop_loops`` (windows of one utterance), a row stops at
        its first loop. Windows of several utterances decode on (the loop is cut after)."""
        if self.loop_repeats and stop_loops:
            stop = LoopStop(self.loop_repeats, len(self.prefix))
            kwargs["stopping_criteria"] = transformers.StoppingCriteriaList([stop])
        if self.multilingual:  # generate puts the language and task tokens after the start
            kwargs = {"language": self.language, "task": self.task} | kwargs
        with (
            _quiet_transformers(),
            self.autocast(),
            self._bf16_decoder_weights(),
            self._fp32_step_attention(),
        ):
            return self.model.generate(
                input_features=feats,
                max_new_tokens=max_new_tokens,
                **({"do_sample": False, "num_beams": 1} | kwargs),
            )

    def _decode(self, ids: torch.Tensor) -> list[str]:
        rows = ids.tolist()
        if self.loop_repeats:
            rows = [collapse_loops(row, self.loop_repeats) for row in rows]
        return [t.strip() for t in self.processor.batch_decode(rows, skip_special_tokens=True)]

    def pack(
        self, waves: Sequence[np.ndarray], gap_s: float | None = None, first_fit: bool = False
    ) -> list[Window]:
        """Pack utterances into windows of at most 30 s, ``gap_s`` (default: the model's
        ``pack_gap_s``) of silence apart.

        In the given order, a window closes when the next utterance does not fit (what
        decoding and scoring need: neighbours stay neighbours). With ``first_fit`` (training),
        the longest utterances are placed first, each in the first window with room, which
        fills windows nearly full (first-fit decreasing).
        """
        gap_s = self.pack_gap_s if gap_s is None else gap_s
        seconds = [len(w) / SAMPLE_RATE for w in waves]
        bins: list[list[int]] = []
        used: list[float] = []
        order = sorted(range(len(waves)), key=lambda k: -seconds[k]) if first_fit else None
        for i in order or range(len(waves)):
            open_bins = range(len(bins)) if first_fit else range(len(bins))[-1:]
            at = next((b for b in open_bins if used[b] + gap_s + seconds[i] <= CHUNK_S), None)
            if at is None:
                bins.append([i])
                used.append(seconds[i])
            else:
                bins[at].append(i)
                used[at] += gap_s + seconds[i]
        gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
        windows = []
        for members in bins:
            spans, parts, at_s = [], [], 0.0
            for k, i in enumerate(members):
                if k:
                    parts.append(gap)
                    at_s += len(gap) / SAMPLE_RATE
                parts.append(waves[i])
                spans.append((at_s, at_s + seconds[i]))
                at_s += seconds[i]
            windows.append(Window(members, spans, np.concatenate(parts)))
        return windows

    def _transcribe_packed(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Decode whole windows with timestamps; each segment goes to the utterance it overlaps.

        Splitting is the weak point: a segment that spans two short utterances goes to one of
        them (see recipes/RESULTS.md). Cross-attention word times split better but made
        decoding six times slower here.
        """
        out = [""] * len(waves)
        windows = self.pack(waves)
        feats = self.features([w.wave for w in windows], CHUNK_S)
        speech_s = max(sum(e - s for s, e in w.spans) for w in windows)
        most = max(len(w.members) for w in windows)  # two timestamp tokens per utterance
        ids = self._generate(
            feats, self._budget(speech_s, 2 * most), stop_loops=False, return_timestamps=True
        )
        for window, seq in zip(windows, ids, strict=True):
            offsets = self.processor.tokenizer.decode(seq.tolist(), output_offsets=True)["offsets"]
            mids = [
                (o["timestamp"][0] + (o["timestamp"][1] or o["timestamp"][0])) / 2 for o in offsets
            ]
            pieces: dict[int, list[str]] = {}
            for offset, k in zip(offsets, assign_segments(mids, window.spans), strict=True):
                pieces.setdefault(k, []).append(offset["text"].strip())
            for k, member in enumerate(window.members):
                out[member] = " ".join(pieces.get(k, []))
        return out

    # -- embeddings and losses ------------------------------------------------------------

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        return self.analyse(waves)[0]

    def loss(self, waves: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Mean NLL per token (text tokens and end of text) of each transcript."""
        return self.analyse(waves, texts)[1]

    @torch.inference_mode()
    def analyse(
        self, waves: Sequence[np.ndarray], texts: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of every encoder layer and (given transcripts) losses from one encoder
        pass per input."""
        layers = self.model.config.encoder_layers + 1  # the blocks' input, then each output
        emb = np.zeros((len(waves), layers, self.model.config.d_model), dtype=np.float32)
        losses = np.full(len(waves), np.nan, dtype=np.float32)
        if self.layout == "packed":
            return self._analyse_packed(waves, texts, emb, losses)
        groups = [(m, self._encode([waves[i] for i in m], s)) for s, m in self._groups(waves)]
        return self._analyse_padded(waves, texts, groups, emb, losses)

    def _analyse_packed(self, waves, texts, emb, losses):
        # one window holds several utterances: each gets the encoder frames of its own span,
        # and the mean NLL of its own tokens within the window's concatenated transcript
        windows = self.pack(waves)
        states = self._encode([w.wave for w in windows], CHUNK_S)
        for row, w in enumerate(windows):
            for member, (start, end) in zip(w.members, w.spans, strict=True):
                lo = int(start * FRAMES_PER_S)
                hi = max(lo + 1, math.ceil(end * FRAMES_PER_S))
                emb[member] = states[row, :, lo:hi].mean(1).float().numpy()
        if texts is None:
            return emb, losses
        states = states[:, -1]  # the decoder attends to the final layer
        token_lists, owners = [], []
        for w in windows:
            tokens, owner = [], []
            for k, member in enumerate(w.members):
                ids = self.text_tokens(texts[member])[:-1]
                tokens += ids
                owner += [k] * len(ids)
            token_lists.append(tokens + [self.eot])
            owners.append(torch.tensor(owner + [len(w.members) - 1]))  # end of text: the last's
        nll = self._token_nll(states, token_lists)
        for row, w in enumerate(windows):
            owner = owners[row]
            for k, member in enumerate(w.members):
                losses[member] = float(nll[row, : len(owner)][owner == k].mean())
        return emb, losses

    def _analyse_padded(self, waves, texts, states_by_group, emb, losses):
        for members, states in states_by_group:
            for row, i in enumerate(members):
                frames = math.ceil(len(waves[i]) / SAMPLE_RATE * FRAMES_PER_S)
                span = min(states.shape[2], max(1, frames))
                emb[i] = states[row, :, :span].mean(1).float().numpy()
            states = states[:, -1]  # the decoder attends to the final layer
            if texts is not None:
                tokens = [self.text_tokens(texts[i]) for i in members]
                nll = self._token_nll(states, tokens)
                for row, i in enumerate(members):
                    losses[i] = float(nll[row, : len(tokens[row])].mean())
        return emb, losses

    def _token_nll(self, states: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
        """NLL of each target token (rows: inputs; columns: text tokens then end of text)."""
        inputs, targets = self._teacher_forcing(tokens)
        with self.autocast():
            logits = self.model(encoder_outputs=(states,), decoder_input_ids=inputs).logits
        logits = logits.float()
        # on flat (positions, vocabulary) rows: the (batch, vocabulary, positions) layout that
        # cross_entropy also takes is several times slower on the CPU
        nll = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        # drop the prefix positions so that column j is text token j
        return nll[:, len(self.prefix) - 1 :]

    def _encode(self, waves: Sequence[np.ndarray], seconds: float) -> torch.Tensor:
        """Encoder states of every layer: (inputs, layers, frames, d_model), the last layer's
        (after the final norm) being what the decoder reads."""
        feats = self.features(waves, seconds)  # log-mel in fp32, outside autocast
        with self.context(seconds), self.autocast():
            out = self.model.get_encoder()(feats, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=1)

    def autocast(self):
        """bf16 autocast on the model's device when ``bf16`` is set, else nothing."""
        return torch.autocast(self.model.device.type, torch.bfloat16, enabled=self.bf16)

    @contextlib.contextmanager
    def _bf16_decoder_weights(self) -> Iterator[None]:
        """With ``bf16``, the decoder's linear layers and the output projection hold bf16
        copies of their weights while generating: autocast would otherwise round the same
        weights again at every step (the output projection alone is 51,864 x 384 values, a
        fifth of a greedy step on a CPU). The rounding is the one autocast does, so the
        tokens are the same; the fp32 weights are put back after."""
        if not self.bf16:
            yield
            return
        linears = [m for m in self.model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
        linears.append(self.model.get_output_embeddings())
        saved = []
        for module in linears:
            for name in ("weight", "bias"):
                value = module._parameters.get(name)
                if value is not None and value.dtype == torch.float32:
                    saved.append((module, name, value))
                    module._parameters[name] = torch.nn.Parameter(
                        value.detach().to(torch.bfloat16), requires_grad=False
                    )
        try:
            yield
        finally:
            for module, name, value in saved:
                module._parameters[name] = value

    @contextlib.contextmanager
    def _fp32_step_attention(self) -> Iterator[None]:
        """With ``decode_attention`` 'fp32', each greedy step attends in fp32 matmuls
        (``decode_step_attention``) while the model generates; its encoder and the first step
        (the prompt's tokens) stay on SDPA."""
        config = self.model.config
        if (
            self.decode_attention != "fp32"
            or AttentionInterface is None
            or config._attn_implementation != "sdpa"
        ):
            yield
            return
        cross = {id(layer.encoder_attn) for layer in self.model.get_decoder().layers}
        token = _STEP_COPIES.set(_Fp32Copies(cross))
        config._attn_implementation = DECODE_ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = "sdpa"
            _STEP_COPIES.reset(token)

    def text_tokens(self, text: str) -> list[int]:
        """Transcript tokens followed by end of text (Whisper's text starts with a space)."""
        ids = self.processor.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids
        return ids + [self.eot]

    # -- training ---------------------------------------------------------------------------

    def training_batch(
        self, waves: Sequence[np.ndarray], texts: Sequence[str], layout: TrainingLayout
    ) -> Batch:
        """Log-mel windows, decoder inputs and labels. Packed: one window per group of
        utterances, their transcripts in order and one end of text; the batch's order is
        random, so its first ``single_windows`` utterances are the ones read alone."""
        if layout.layout == "packed":
            alone = min(layout.single_windows, len(waves) - 1)
            windows = self.pack(waves[alone:], layout.gap_s, layout.first_fit)
            windows = [Window([k + alone for k in w.members], w.spans, w.wave) for w in windows]
            windows = [
                Window([k], [(0.0, len(waves[k]) / SAMPLE_RATE)], waves[k]) for k in range(alone)
            ] + windows
            waves = [w.wave for w in windows]
            tokens = [
                [t for k in w.members for t in self.text_tokens(texts[k])[:-1]] + [self.eot]
                for w in windows
            ]
        else:
            tokens = [self.text_tokens(t) for t in texts]
        # short: the cut context only when every utterance fits (as transcribe does)
        fits = max(len(w) for w in waves) <= layout.context_s * SAMPLE_RATE
        seconds = layout.context_s if layout.layout == "short" and fits else CHUNK_S
        inputs, labels = self._teacher_forcing(tokens)
        return {
            "input_features": self.features(waves, seconds).cpu(),
            "decoder_input_ids": inputs.cpu(),
            "labels": labels.cpu(),
            "input_s": torch.tensor(len(waves) * seconds),
        }

    def training_loss(self, module: torch.nn.Module, batch: Batch):
        """Token cross-entropy; the mask marks label positions."""
        logits = module(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits
        # flattened to (positions, vocabulary): a class dimension in the middle (B, V, L) made
        # the loss 3 times slower on the CPU
        flat = logits.float().reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, batch["labels"].reshape(-1), ignore_index=-100)
        return loss, logits, batch["labels"] != -100

    def training_context(self, batch: Batch) -> contextlib.AbstractContextManager:
        """The 'short' layout's cut encoder context, read off the features' length."""
        return self.context(batch["input_features"].shape[-1] / MEL_FRAMES_PER_S)

    def freeze(self, module: torch.nn.Module, train: str) -> None:
        """See FinetuneConfig.train. The output projection is tied to the token embeddings."""
        if train in ("full", "lora"):  # LoRA: the adapters' set-up freezes the base itself
            return
        core = module.model
        frozen = {
            "encoder_frozen": [core.encoder],
            "decoder_only": [core.encoder, core.decoder.embed_tokens, core.decoder.embed_positions],
            "decoder_frozen": [core.decoder],
            "decoder_lm_frozen": [core.decoder],  # its cross-attention trains again below
            "feature_encoder_frozen": [core.encoder.conv1, core.encoder.conv2],
        }.get(train)
        if frozen is None:
            raise UserError(f"finetune.train: {train!r} is not a part of a Whisper model")
        for part in frozen:
            part.requires_grad_(False)
        if train == "decoder_lm_frozen":  # what the decoder reads from the encoder still adapts
            for layer in core.decoder.layers:
                layer.encoder_attn.requires_grad_(True)
                layer.encoder_attn_layer_norm.requires_grad_(True)

    def is_decoder(self, name: str) -> bool:
        """The decoder's parameters, its output projection included."""
        return name.startswith(("model.decoder.", "proj_out."))

    def _teacher_forcing(self, tokens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs (prefix + text) and targets (text + end, -100 on prefix and padding)."""
        width = len(self.prefix) - 1 + max(len(t) for t in tokens)
        inputs = torch.full((len(tokens), width), self.eot, dtype=torch.long)
        targets = torch.full((len(tokens), width), -100, dtype=torch.long)
        for row, seq in enumerate(tokens):
            full = self.prefix + seq
            inputs[row, : len(full) - 1] = torch.tensor(full[:-1])
            targets[row, len(self.prefix) - 1 : len(full) - 1] = torch.tensor(seq)
        return inputs.to(self.model.device), targets.to(self.model.device)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence per-call advice (max_length vs max_new_tokens, Whisper's unused attention mask)."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def assign_segments(midpoints: list[float], spans: list[tuple[float, float]]) -> list[int]:
    """The utterance each decoded word (or segment) belongs to, from its time in the window.

    Whisper's times drift (they often run late), so they are first shifted by the offset that
    puts the most of them inside an utterance's span.
    """
    if not midpoints:
        return []
    mids = np.asarray(midpoints)
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])

    def distance(shift: float) -> np.ndarray:  # segments x spans, 0 inside a span
        t = mids[:, None] - shift
        return np.maximum(starts[None, :] - t, 0) + np.maximum(t - ends[None, :], 0)

    shifts = np.arange(-3.0, 3.0 + 1e-9, 0.02)
    costs = [distance(s).min(axis=1).sum() + 1e-3 * abs(s) for s in shifts]
    return distance(shifts[int(np.argmin(costs))]).argmin(axis=1).tolist()
