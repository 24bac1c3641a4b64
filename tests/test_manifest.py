import pandas as pd
import pytest

from pipeline import manifest
from pipeline.manifest import ManifestError
from tests.factories import dummy_row as row


def test_roundtrip_keeps_rows_and_resolves_relative_paths(tmp_path):
    audio = tmp_path / "data" / "audio"
    audio.mkdir(parents=True)
    rows = [row(0, str(audio / "a.flac")), row(1, "/usr/share/x.wav", noise="white", snr_db=5.0)]
    path = tmp_path / "data" / "manifests" / "pool.parquet"
    manifest.write(manifest.to_frame(rows), path, root=tmp_path / "data")
    stored = pd.read_parquet(path)
    assert stored["audio_path"].tolist() == ["../audio/a.flac", "/usr/share/x.wav"]
    back = manifest.read(path)
    assert back["audio_path"].tolist() == [str(audio / "a.flac"), "/usr/share/x.wav"]
    assert back["snr_db"].isna().tolist() == [True, False]
    assert list(back.columns[:10]) == list(manifest.COLUMNS)
    assert [p.name for p in path.parent.iterdir()] == ["pool.parquet"]  # no temp files left


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([row(0, "a"), row(0, "b")], "duplicate id 'u000'"),
        ([row(0, "a", duration_s=0.0)], "non-positive duration"),
        ([row(0, "a", noise="white")], "noisy rows need snr_db"),
        ([row(0, None)], "column audio_path has empty values"),
    ],
)
def test_validation_rejects_bad_tables(rows, message):
    with pytest.raises(ManifestError, match=message):
        manifest.to_frame(rows)


def test_missing_columns_and_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="missing columns"):
        manifest.validate(pd.DataFrame({"id": ["a"]}))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet manifest"):
        manifest.read(bad)
    with pytest.raises(ManifestError, match="manifest not found"):
        manifest.read(tmp_path / "none.parquet")


def test_summary_counts_utterances_and_hours():
    frame = manifest.to_frame(
        [
            row(0, "a", duration_s=1800.0),
            row(1, "b", duration_s=1800.0),
            row(2, "c", noise="white", snr_db=5.0),
        ]
    )
    table = manifest.summary(frame)
    clean = table[table["noise"] == "clean"].iloc[0]
    assert clean["utterances"] == 2 and clean["hours"] == pytest.approx(1.0)
    assert table[table["noise"] == "white"].iloc[0]["snr_db"] == "5"
