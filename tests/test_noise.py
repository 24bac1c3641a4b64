import numpy as np
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.config import NoiseConfig, PrepareConfig
from pipeline.errors import UserError
from pipeline.prepare.corpora import noise

PREP = PrepareConfig()


def clean_rows(tmp_path, speech, n=6):
    rows = []
    for i in range(n):
        path = tmp_path / f"c{i}.flac"
        audio.write_flac(path, np.roll(speech, 800 * i))
        rows.append({"id": f"u{i}", "audio_path": str(path), "speaker": f"s{i % 3}"})
    return rows


def test_real_recordings_are_found_and_unknown_names_refused():
    for name in ("vinyl_hiss", "3d_printer", "sauna", "safari"):
        (path,) = noise.recording_files(name, PREP)
        assert sf.info(path).duration > 5
    with pytest.raises(UserError, match="noise 'no_such_noise': recording not found"):
        noise.recording_files("no_such_noise", PREP)


def test_plan_is_deterministic_and_covers_every_snr(tmp_path, speech):
    rows = clean_rows(tmp_path, speech)
    cfg = NoiseConfig(
        types=("vinyl_hiss", "babble", "white"), snr_db=(20, 5, 0), per_utterance="each_snr"
    )
    first = noise.plan(rows[0], cfg, PREP, 0, "s", rows, tmp_path / "noisy")
    again = noise.plan(rows[0], cfg, PREP, 0, "s", rows, tmp_path / "noisy")
    assert first == again
    assert sorted(j.snr_db for j in first) == [0, 5, 20]
    other_seed = noise.plan(rows[0], cfg, PREP, 1, "s", rows, tmp_path / "noisy")
    assert [j.seed for j in other_seed] != [j.seed for j in first]


def test_babble_uses_other_speakers(tmp_path, speech):
    rows = clean_rows(tmp_path, speech)
    cfg = NoiseConfig(types=("babble",), snr_db=(5,), babble_talkers=(3, 4))
    for row in rows:
        (job,) = noise.plan(row, cfg, PREP, 0, "s", rows, tmp_path / "noisy")
        talkers = [r for r in rows if r["audio_path"] in job.babble]
        assert 2 <= len(talkers) <= 4  # only 4 of the 6 rows are by other speakers
        assert all(t["speaker"] != row["speaker"] for t in talkers)


@pytest.mark.parametrize("kind", ["vinyl_hiss", "3d_printer", "babble", "white", "pink"])
def test_make_mixes_at_the_requested_snr(tmp_path, speech, kind):
    rows = clean_rows(tmp_path, speech)
    cfg = NoiseConfig(types=(kind,), snr_db=(5,))
    (job,) = noise.plan(rows[0], cfg, PREP, 0, "s", rows, tmp_path / "noisy")
    made = noise.make(job)
    assert made["noise"] == kind and made["snr_db"] == 5.0
    mixed, _ = audio.read(made["audio_path"])
    clean, _ = audio.read(rows[0]["audio_path"])
    added = (mixed - clean).astype(np.float64)
    snr = 10 * np.log10(audio.active_level(clean) / np.mean(added**2))
    assert snr == pytest.approx(5.0, abs=0.3)  # 16-bit storage and peak scaling add a little


def test_regions_keep_test_noise_apart():
    ramp = np.arange(10_000, dtype=np.float32)
    job = noise.NoisyJob("x", "", "", "vinyl_hiss", 0.0, 1, region=(0.7, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        seg = noise._loop(ramp[int(0.7 * 10_000) :], 5000, rng)
        assert seg.min() >= 7000
    # a real recording: the region's samples only
    job = noise.NoisyJob(
        "x",
        "",
        "",
        "vinyl_hiss",
        0.0,
        1,
        recording=noise.recording_files("vinyl_hiss", PREP),
        region=(0.0, 0.6),
    )
    full = noise._recording(job.recording, 16000)
    seg = noise.segment(job, 4000, np.random.default_rng(3), 16000)
    train = full[: int(0.6 * len(full))]
    start = next(i for i in range(len(train)) if np.array_equal(train[i : i + 50], seg[:50]))
    assert start < len(train)


def test_pink_noise_falls_with_frequency():
    wave = noise.pink(1 << 16, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(wave)) ** 2
    low, high = power[10:100].mean(), power[10_000:20_000].mean()
    assert low > 50 * high


def test_noise_bank_regions_split_the_bank_by_recording(tmp_path, speech):
    rng = np.random.default_rng(0)
    bank = []
    for folder, count in (("free-sound", 14), ("sound-bible", 6)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            bank.append(str(tmp_path / folder / f"noise-{folder}-{i:04d}.wav"))
            sf.write(bank[-1], 0.1 * rng.standard_normal(8000), 16000)
    bank = tuple(bank)
    shares = {r: noise.bank_share(bank, PREP.noise_regions[r]) for r in ("train", "dev", "test")}
    assert [len(s) for s in shares.values()] == [12, 2, 6]
    assert set().union(*shares.values()) == set(bank)  # disjoint, and the whole bank
    assert {"free-sound", "sound-bible"} <= {f.split("/")[-2] for f in shares["test"]}

    rows = clean_rows(tmp_path, speech, n=20)
    banks = {"musan": bank}
    for region in ("train", "test"):
        cfg = NoiseConfig(types=("musan",), snr_db=(5, 0), region=region)
        jobs = [
            job
            for row in rows
            for job in noise.plan(row, cfg, PREP, 0, "s", rows, tmp_path / "noisy", banks)
        ]
        used = {job.recording for job in jobs}
        assert all(len(r) == 1 and r[0] in shares[region] for r in used) and len(used) > 3
        assert {job.region for job in jobs} == {(0.0, 1.0)}  # the whole recording
    made = noise.make(jobs[0])
    assert made["noise"] == "musan" and sf.info(made["audio_path"]).duration > 1

    cfg = NoiseConfig(types=("musan",), snr_db=(0,), region="dev")
    with pytest.raises(UserError, match="region 'dev' gets none of the bank's 3 recordings"):
        noise.plan(rows[0], cfg, PREP, 0, "s", rows, tmp_path, {"musan": bank[:3]})
