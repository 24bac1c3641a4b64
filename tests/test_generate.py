"""Generated candidates: the target's own acoustics (voice activity, noise bank, SNR), the
augment source, and their acceptance by one pass of rejection sampling in select."""

import json
from dataclasses import replace

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipeline import audio, config, experiment, manifest, prepare, score, text, typed
from pipeline.config import ModelConfig, SelectConfig, load_recipe
from pipeline.errors import RecipeError, UserError
from pipeline.generate import acoustics, pseudo
from pipeline.models import loader
from pipeline.prepare.corpora import asterisk
from pipeline.prepare.corpora import noise as noise_mod
from pipeline.prepare.corpora.asterisk import read_transcripts, speech_text
from pipeline.report import doc, plots
from pipeline.select import generated, sampling
from pipeline.select import stage as select
from tests.factories import ACCENTS, NOISES, dummy_row, fake_scored_set, speak

SOUNDS = asterisk.SOUNDS / "en"
TRANSCRIPTS = asterisk.DOCS / "asterisk-core-sounds-en" / "core-sounds-en.txt.gz"

SENTENCES = ["turn on the kitchen lights please", "what is the weather like tomorrow in paris"]


def spoken(text: str) -> np.ndarray:
    wave, rate = speak(text)
    return librosa.resample(wave, orig_sr=rate, target_sr=16000).astype(np.float32)


def active_span(wave: np.ndarray) -> tuple[int, int]:
    """First and last sample of the 20 ms frames within 40 dB of the loudest (the speech)."""
    frame = 320
    power = np.mean(wave[: len(wave) // frame * frame].reshape(-1, frame) ** 2, axis=1)
    on = np.flatnonzero(power >= power.max() * 1e-4)
    return int(on[0] * frame), int((on[-1] + 1) * frame)


def test_vad_marks_the_speech_and_the_noise_bank_holds_only_what_lies_outside_it():
    speech = spoken(SENTENCES[0])
    pad = np.zeros(16000, np.float32)
    clean = np.concatenate([pad, speech, pad])
    start, end = active_span(clean)
    noisy = audio.mix_at_snr(clean, np.random.default_rng(0).standard_normal(len(clean)), 20.0)
    threads = torch.get_num_threads()
    segments = acoustics.speech_segments(noisy)
    assert torch.get_num_threads() == threads  # silero_vad's import sets 1; put back
    assert segments, "no speech found"
    assert segments[0][0] >= start - 0.15 * 16000 and segments[-1][1] <= end + 0.15 * 16000
    marked = np.zeros(len(noisy), bool)
    for s, e in segments:
        marked[s:e] = True
    assert marked[start:end].mean() >= 0.8  # the speech is found
    mask = acoustics.noise_mask(len(noisy), segments)
    assert not mask[start:end].any()  # no speech goes into the noise bank
    assert mask[: start - 3200].all() and mask[end + 3200 :].all()  # the silences do
    found = acoustics.analyse(noisy, segments=segments)
    assert found.noise_s >= 1.5 and len(found.noise) == int(found.noise_s * 16000)
    assert abs(found.speech_s - (end - start) / 16000) < 0.4


def test_batched_vad_equals_silero_chunk_by_chunk():
    """The reference loop (silero_vad/tinygrad_model.py): 512 new samples with 64 of
    context per call, the LSTM state carried from call to call."""
    model = acoustics._silero()
    wave = spoken(SENTENCES[1])
    x = torch.nn.functional.pad(torch.from_numpy(wave), (64, -len(wave) % 512))
    state, probs = None, []
    with torch.inference_mode():
        for i in range(64, len(x), 512):
            chunk = torch.nn.functional.pad(x[i - 64 : i + 512][None], (0, 64), mode="reflect")
            y = model.stft_conv(chunk[:, None])
            y = (y[:, :129] ** 2 + y[:, 129:] ** 2).sqrt()
            for conv in (model.conv1, model.conv2, model.conv3, model.conv4):
                y = conv(y).relu()
            state = model.lstm_cell(y.squeeze(-1), state)
            probs.append(model.final_conv(state[0].relu()[..., None]).sigmoid().mean().item())
    batched = acoustics.speech_probabilities(wave)
    assert len(batched) == len(probs) == -(-len(wave) // 512)
    assert np.abs(batched - np.array(probs)).max() < 1e-5
    assert batched.max() > 0.9 and batched.min() < 0.5  # speech, and the silence after it


@pytest.mark.parametrize("kind", ["white", "pink", "3d_printer"])
def test_snr_of_mixtures_of_known_snr_is_estimated_within_2_db(kind):
    printer = audio.read("/usr/share/sonic-pi/samples/loop_3d_printer.flac")[0]
    printer = printer[: int(0.6 * len(printer))]  # the training region
    for sentence in SENTENCES:
        pad = np.zeros(12000, np.float32)
        clean = np.concatenate([pad, spoken(sentence), pad])
        for snr in (0.0, 5.0, 10.0, 20.0):
            rng = np.random.default_rng(int(snr))
            if kind == "white":
                noise = rng.standard_normal(len(clean)).astype(np.float32)
            elif kind == "pink":
                noise = noise_mod.pink(len(clean), rng)
            else:
                noise = noise_mod._loop(printer, len(clean), rng)
            estimate = acoustics.analyse(audio.mix_at_snr(clean, noise, snr)).snr_db
            assert estimate is not None and abs(estimate - snr) <= 2.0, (text, snr, estimate)


def test_without_noise_or_speech_the_snr_is_unknown():
    assert acoustics.estimate_snr_db(np.ones(3200, np.float32), np.zeros(0)) is None
    silence = np.zeros(32000, np.float32)
    found = acoustics.analyse(silence, segments=[])
    assert found.snr_db is None and found.speech_s == 0


def test_one_pass_rejection_accepts_each_candidate_with_probability_w_over_m():
    rng = np.random.default_rng(0)
    log_w = rng.normal(0, 1.5, 200)
    log_w[:5] = -np.inf  # weight 0: never accepted
    draws = 3000
    counts = np.zeros(200)
    for _ in range(draws):
        chosen = sampling.one_pass_rejection(log_w, rng)
        counts[chosen.indices] += 1
    expected = np.exp(log_w - log_w.max())
    assert counts[:5].sum() == 0
    sd = np.sqrt(expected * (1 - expected) / draws) + 1e-3
    assert np.all(np.abs(counts / draws - expected) <= 5 * sd)
    capped = sampling.one_pass_rejection(log_w, rng, cap_quantile=0.5)
    assert capped.clipped_mass > 0 and capped.size > chosen.size


# -- the augment source through prepare --


def target_folder(folder, count=8, snr_db=5.0):
    """A user's unlabelled recordings: speech with noise before and after it (white noise
    everywhere at ``snr_db``), listed in a table without transcripts."""
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        pad = np.zeros(8000, np.float32)
        clean = np.concatenate([pad, spoken(SENTENCES[i % 2]), pad])
        noise = np.random.default_rng(i).standard_normal(len(clean)).astype(np.float32)
        sf.write(folder / f"r{i}.wav", audio.mix_at_snr(clean, noise, snr_db), 16000)
        rows.append({"path": f"r{i}.wav"})
    pd.DataFrame(rows).to_csv(folder / "requests.tsv", sep="\t", index=False)


def augment_recipe(
    write_recipe, folder, count=12, order=("pool", "target", "augmented"), pool_count=4
):
    sets = {
        "pool": {
            "name": "pool",
            "split": "pool",
            "source": {"kind": "synth", "parts": [{"count": pool_count, "voices": ["us"]}]},
        },
        "target": {
            "name": "target",
            "split": "target",
            "source": {"kind": "local", "path": str(folder)},
        },
        "augmented": {
            "name": "augmented",
            "split": "pool",
            "source": {"kind": "augment", "count": count, "speeds": [0.9, 1.0, 1.1]},
        },
    }
    return load_recipe(
        write_recipe({"prepare": {"workers": 1, "sets": [sets[name] for name in order]}})
    )


@pytest.mark.slow
def test_augment_makes_pool_speech_in_the_targets_noise_at_its_snrs(write_recipe, tmp_path):
    folder = tmp_path / "requests"
    target_folder(folder)
    recipe = augment_recipe(write_recipe, folder)
    prepare.run(recipe)
    tree = recipe.tree
    pool = manifest.read(tree.manifest("pool")).set_index("id")
    made = manifest.read(tree.manifest("augmented"))
    target = manifest.read(tree.manifest("target"))
    assert target["text"].eq("").all() or target["text"].isna().all()  # no transcripts
    assert len(made) == 12 and made["noise"].eq("target_bank").all()
    bank = json.loads((tree.sources("augmented") / "bank.json").read_text())
    snrs = [e["snr_db"] for e in bank.values()]
    assert len(bank) == 8 and all(e["bank"] for e in bank.values())
    assert abs(np.median(snrs) - 5.0) <= 2.0  # the users' 5 dB, estimated without labels
    assert set(np.round(made["snr_db"], 3)) <= set(np.round(snrs, 3))
    assert set(made["speed"]) <= {0.9, 1.0, 1.1} and made["speed"].nunique() > 1
    assert made["origin"].isin(pool.index).all()
    origin = pool.loc[made["origin"]]
    assert (made["text"].to_numpy() == origin["text"].to_numpy()).all()
    expected = origin["duration_s"].to_numpy() / made["speed"].to_numpy()
    assert np.allclose(made["duration_s"], expected, atol=0.01)
    # the speech is in the candidates: louder than the bank's noise alone
    for row in made.head(3).itertuples():
        wave, _ = audio.read(row.audio_path)
        clean, _ = audio.read(pool.loc[row.origin, "audio_path"])
        assert abs(len(wave) - len(clean) / row.speed) <= 2
    stamp = tree.manifests / "augmented.done.json"
    index = tree.sources("augmented") / "bank.json"
    before = (stamp.stat().st_mtime_ns, index.stat().st_mtime_ns)
    prepare.run(recipe)  # up to date: nothing is made again
    after = (stamp.stat().st_mtime_ns, index.stat().st_mtime_ns)
    assert before == after
    pd.testing.assert_frame_equal(manifest.read(tree.manifest("augmented")), made)


def test_augment_needs_its_sets_listed_before_it(write_recipe, tmp_path):
    with pytest.raises(RecipeError, match="not a set listed before 'augmented'"):
        augment_recipe(write_recipe, tmp_path, order=("pool", "augmented", "target"))


# -- select: candidates accepted by rejection --


def generated_recipe(write_recipe, tmp_path, pool_has_target: bool):
    groups = [(a, n) for a in ACCENTS for n in NOISES for _ in range(100)]
    if not pool_has_target:
        groups = [g for g in groups if g != ("caribbean", NOISES[2])]
    root = tmp_path / "data"
    fake_scored_set(root, "pool", groups, np.random.default_rng(1))
    fake_scored_set(root, "target", [("caribbean", NOISES[2])] * 40, np.random.default_rng(1))
    # candidates: half in the target's condition, half in another
    cand = [("caribbean", NOISES[2])] * 30 + [("us", NOISES[0])] * 30
    fake_scored_set(root, "augmented", cand, np.random.default_rng(1))
    if not pool_has_target:  # the target lies where the pool never goes; half the candidates too
        for name, rows in (("target", slice(None)), ("augmented", slice(0, 30))):
            path = root / "score" / name / "embeddings.npy"
            emb = np.load(path).astype(np.float32)
            emb[rows] += 6.0
            np.save(path, emb.astype(np.float16))
    synth = {"kind": "synth", "parts": [{"count": 60, "voices": ["us"]}]}
    return load_recipe(
        write_recipe(
            {
                "prepare": {"sets": [{"name": "augmented", "split": "pool", "source": synth}]},
                "select": {
                    "budget": 50,
                    "folds": 3,
                    "augment_set": "augmented",
                    "selectors": ["rsft", "random", "oracle", "rsft_aug", "rsft_aug_all"],
                    "oracle_columns": ["accent"],
                },
            }
        )
    )


def subset_ids(recipe, selector):
    return set(manifest.read(recipe.root / "select" / selector / "subset.parquet")["id"])


def test_rsft_aug_adds_the_accepted_candidates_to_rsfts_own_draw(write_recipe, tmp_path):
    recipe = generated_recipe(write_recipe, tmp_path, pool_has_target=True)
    table = select.run(recipe).set_index("selector")
    rsft, aug = subset_ids(recipe, "rsft"), subset_ids(recipe, "rsft_aug")
    everything = subset_ids(recipe, "rsft_aug_all")
    assert rsft <= aug and rsft <= everything  # the same pool draw: arms differ by candidates
    accepted = aug - rsft
    assert accepted and all(i.startswith("augmented-") for i in accepted)
    assert everything - rsft == {f"augmented-{i:05d}" for i in range(60)}
    # what is accepted looks like the target: the candidates in its condition weigh more
    frame, emb, _ = select.load_scored(recipe, "augmented")
    _, target_emb, _ = select.load_scored(recipe, "target")
    block = generated.augment_block(frame, emb, target_emb, recipe.select, recipe.seed)
    w = np.exp(block.log_w - block.log_w.max())  # acceptance probabilities w / M
    assert w[:30].mean() >= 2 * w[30:].mean()
    in_target = sum(int(i.split("-")[1]) < 30 for i in accepted)
    assert in_target / len(accepted) >= 0.6
    diag = json.loads((recipe.root / "select" / "rsft_aug" / "diagnostics.json").read_text())
    made = diag["generated"]["augment"]
    assert made["candidates"] == made["generated"] == 60 and made["accepted"] == len(accepted)
    assert 0.5 < made["auc"] < 1.0
    assert table.loc["rsft_aug", "selected"] == 50 + len(accepted)


def test_a_target_the_pool_never_heard_no_longer_stops_select(write_recipe, tmp_path):
    recipe = generated_recipe(write_recipe, tmp_path, pool_has_target=False)
    table = select.run(recipe).set_index("selector")
    assert "separates target from pool" in table.loc["rsft", "skipped"]
    aug = subset_ids(recipe, "rsft_aug")
    accepted = {i for i in aug if i.startswith("augmented-")}
    assert accepted and sum(int(i.split("-")[1]) < 30 for i in accepted) / len(accepted) >= 0.8
    assert len(aug - accepted) == 50  # the pool's part: a uniform draw
    # the oracle matched on the accent alone: the target's noise is in no pool group
    oracle = manifest.read(recipe.root / "select" / "oracle" / "subset.parquet")
    assert len(oracle) == 50 and oracle["accent"].eq("caribbean").all()
    assert table.loc["random", "selected"] == 50
    no_generation = load_recipe(write_recipe({"select": {"budget": 50, "folds": 3}}))
    with pytest.raises(Exception, match="separates target from pool"):
        select.run(no_generation)


# -- pseudo-labels --


def test_agreement_of_sampled_transcripts_with_the_greedy_one():
    assert pseudo.agreement("Turn on the lights.", ["turn on the lights"] * 3) == 1.0
    assert pseudo.agreement(
        "turn on the lights", ["turn off the lights", "turn on the lights"]
    ) == (pytest.approx((0.75 + 1.0) / 2))
    assert pseudo.agreement("turn on", ["play some loud music now please"]) == 0.0  # floored
    assert pseudo.agreement("", ["anything"]) == 0.0  # an empty label labels nothing
    # scored in the recipe's language: French keeps the accent that English drops
    assert pseudo.agreement("Un café noir.", ["un cafe noir"]) == 1.0
    assert pseudo.agreement("Un café noir.", ["un cafe noir"], "fr") == pytest.approx(2 / 3)


def test_pseudo_label_diagnostics_score_in_the_recipe_language():
    target = pd.DataFrame(
        {"id": ["a", "b"], "text": ["Un café noir.", "Deux thés."], "source": "local"}
    )
    labels = pd.DataFrame(
        {
            "id": ["a", "b"],
            "hypothesis": ["un cafe noir", "deux thés"],
            "agreement": [0.9, 0.8],
            "logprob": [-0.1, -0.2],
        }
    )
    cfg = SelectConfig(pseudo_labels=True)
    made = {}
    for language in ("en", "fr"):
        block = generated.pseudo_block(target, labels, cfg, language)
        made[language] = generated.Generated(target.iloc[:0], [], {"pseudo": block})
    draw = sampling.Selection(np.zeros(0, np.int64), "rsft", 1, 0, 0)
    wer = {}
    for language, gen in made.items():
        selection, _ = gen.select("rsft_pl", cfg, draw, np.zeros(0), seed=0)
        wer[language] = gen.diagnostics("rsft_pl", selection)["pseudo"]["references"]["wer_all"]
    assert wer["en"] == 0.0 and wer["fr"] == pytest.approx(1 / 5)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return loader.load(ModelConfig(), tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_reliable_pseudo_labels_are_accepted_and_wrong_ones_rejected(whisper, tmp_path):
    """Real prompts clean (the teacher gets them right) and in heavy noise (it does not):
    without reading a reference, acceptance keeps labels far better than the ones it drops."""
    prompts = sorted(read_transcripts(TRANSCRIPTS).items())
    prompts = [(k, speech_text(t)) for k, t in prompts if len(speech_text(t).split()) >= 4][:30:5]
    rows = []
    for key, words in prompts:
        wave = audio.read(SOUNDS / f"{key}.wav", 16000)[0]
        for snr in (None, -5.0):
            noise = np.random.default_rng(len(rows)).standard_normal(len(wave))
            mixed = wave if snr is None else audio.mix_at_snr(wave, noise, snr)
            path = tmp_path / f"{key}-{snr}.flac"
            audio.write_flac(path, mixed)
            rows.append(dummy_row(len(rows), str(path), text=words, duration_s=len(wave) / 16000))
    frame = manifest.to_frame(rows)
    labels = pseudo.label(whisper, frame, samples=4, temperature=0.7, seed=0)
    # each utterance's labels depend on its audio, id and the seed alone, not on its neighbours
    again = pseudo.label(whisper, frame.iloc[[5, 2, 1]].reset_index(drop=True), 4, 0.7, seed=0)
    alone = again.set_index("id").sort_index()
    among = labels.set_index("id").loc[alone.index]
    for column in ("hypothesis", "samples", "agreement"):
        assert alone[column].tolist() == among[column].tolist(), column
    # bf16 matmuls of other batch shapes round a little differently
    assert np.allclose(alone["logprob"], among["logprob"], atol=0.05)
    clean, noisy = labels["agreement"][::2], labels["agreement"][1::2]
    assert clean.mean() > noisy.mean() + 0.2
    cfg = SelectConfig(pseudo_labels=True)
    block = generated.pseudo_block(frame, labels, cfg)
    made = generated.Generated(frame.iloc[:0], [], {"pseudo": block})
    draw = sampling.Selection(np.zeros(0, np.int64), "rsft", 1, 0, 0)
    selection, _ = made.select("rsft_pl", cfg, draw, np.zeros(0), seed=0)
    quality = made.diagnostics("rsft_pl", selection)["pseudo"]["references"]
    assert quality["wer_accepted"] < quality["wer_all"] < quality["wer_rejected"]
    curve = {c["threshold"]: c for c in quality["curve"]}
    assert curve[0.0]["kept"] == block.frame.shape[0] and curve[1.0]["kept"] <= curve[0.5]["kept"]


def test_make_demo_neither_makes_nor_reads_what_only_generator_arms_take():
    recipe = load_recipe("recipes/demo.yaml")
    quick = experiment.without_unused_generators(recipe, experiment.plan(recipe, quick=True))
    names = {s.name for s in quick.prepare.sets}
    assert {"augmented", "target_real"}.isdisjoint(names) and "target" in names
    assert quick.select.augment_set is None and not quick.select.pseudo_labels
    full = experiment.plan(recipe, quick=False)
    assert {"rsft_aug", "rsft_pl", "rsft_gen", "rsft_gen_all"} <= {a.system for a in full}
    kept = experiment.without_unused_generators(recipe, full)
    assert {s.name for s in kept.prepare.sets} == {s.name for s in recipe.prepare.sets}
    assert kept.select == recipe.select
    chosen = replace(recipe, experiment=replace(recipe.experiment, systems=("rsft", "full")))
    plain = experiment.without_unused_generators(chosen, experiment.plan(chosen, quick=False))
    assert plain.select.augment_set is None and not plain.select.pseudo_labels


def test_the_report_tables_generated_data_and_draws_the_pseudo_label_curve():
    curve = [{"threshold": t, "kept": 10 - int(10 * t), "wer": 0.4 - 0.3 * t} for t in (0, 0.5, 1)]
    diagnostics = {
        "rsft": {},
        "rsft_gen": {
            "generated": {
                "augment": {"generated": 600, "accepted": 90, "acceptance": 0.15, "auc": 0.81},
                "pseudo": {
                    "generated": 100,
                    "accepted": 40,
                    "acceptance": 0.4,
                    "references": {"wer_accepted": 0.12, "wer_all": 0.35, "curve": curve},
                },
            }
        },
    }
    table = doc.generated(diagnostics)
    assert table.rows == [
        ["rsft_gen", "augment", "600", "90", "0.150", "0.810", "-", "-", ""],
        ["rsft_gen", "pseudo", "100", "40", "0.400", "-", "12.0", "35.0", ""],
    ]
    assert doc.generated({"rsft": {}}) is None
    assert plots.pseudo_label_curve(curve)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_unlabelled_recordings_go_through_prepare_score_and_select_to_generated_arms(
    write_recipe, tmp_path, tiny_whisper_dir
):
    """A folder of recordings without transcripts as the target: the augment source takes its
    noise, score pseudo-labels it (a second-round teacher named by score.pseudo_teacher), and
    select hands both to the generated arms."""
    folder = tmp_path / "requests"
    target_folder(folder, count=24)
    recipe = augment_recipe(write_recipe, folder, count=30, pool_count=12)
    data = {
        "name": "t",
        "data_dir": str(recipe.root),
        "model": {"name": str(tiny_whisper_dir)},
        "prepare": {"workers": 1, "sets": [typed.to_dict(s) for s in recipe.prepare.sets]},
        "score": {
            "hypotheses": False,
            "pseudo_samples": 2,
            "pseudo_teacher": str(tiny_whisper_dir),
        },
        "select": {
            "budget": 2,
            "folds": 2,
            "augment_set": "augmented",
            "pseudo_labels": True,
            "selectors": ["rsft", "random", "rsft_aug_all", "rsft_pl_all", "rsft_gen_all"],
        },
    }
    recipe = config.build_recipe(data)
    prepare.run(recipe)
    score.run(recipe)
    labels = pd.read_parquet(recipe.tree.score("target") / "pseudo.parquet")
    assert len(labels) == 24 and labels["agreement"].between(0, 1).all()
    stamp = json.loads((recipe.tree.score("target") / "pseudo.done.json").read_text())
    assert stamp["teacher"] == str(tiny_whisper_dir)
    select.run(recipe)
    everything = manifest.read(recipe.root / "select" / "rsft_gen_all" / "subset.parquet")
    by_source = everything.groupby("source")["id"].apply(set)
    # the pool's part: rsft's draw, or a uniform one where the random model's embeddings leave
    # the pool no ratio to the target
    assert len(by_source["synth"]) == 2
    assert by_source["augment"] == {f"augmented-{i:05d}" for i in range(30)}
    labelled = labels[labels["hypothesis"].map(lambda h: bool(text.normalize(h)))]
    assert by_source["pseudo"] == set(labelled["id"])
    rows = everything[everything["source"] == "pseudo"].set_index("id")
    expected = labelled.set_index("id").loc[rows.index, "hypothesis"]
    assert (rows["text"] == expected).all()  # trained on the teacher's labels


def test_generated_rows_that_share_pool_ids_are_refused_in_one_line():
    pool = pd.DataFrame({"id": ["a", "b"]})
    target = pd.DataFrame({"id": ["b", "c"], "text": ["x y", "y z"], "source": "local"})
    labels = pd.DataFrame(
        {"id": ["b", "c"], "hypothesis": ["x y", "y z"], "agreement": 0.9, "logprob": -0.1}
    )
    block = generated.pseudo_block(target, labels, SelectConfig(pseudo_labels=True))
    with pytest.raises(UserError, match=r"1 pseudo row id\(s\) are also pool ids \(b,"):
        generated.check_ids(pool, {"pseudo": block})
    generated.check_ids(pool.assign(id=["a", "d"]), {"pseudo": block})  # distinct: fine
