"""`vaerr preprocess`: the labelled person's choice, audio features, and the Ray Data job on
the real clips (labels resampled, two faces, no face, a corrupt file, S3 output, reruns)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs.cli import main
from schemas.config import load_config
from schemas.tables import CLIP_SHARD
from schemas.train import AudioFeatureConfig
from tests.conftest import asset, face_overrides
from training.audio import LogMel, feature_dim, frame_features, mel_filterbank, stack_per_frame
from training.datasets.shards import read_sequence, read_sequences, read_shard_status
from training.preprocess import choose_tracks, preprocess_hash, run_preprocess

GRID = ["grid_bbaf2n.mpg", "grid_lbbc2a.mpg", "grid_swiz3n.mpg"]
FAST = ["faces.detector.every_k=5", "data.threads=1"]


def energy_extractor(audio, rate, frame_ms=10.0, scale=1.0):
    """An importable custom extractor (stands in for PASE+): RMS per 10 ms frame, [M, 2]."""
    hop = int(rate * frame_ms / 1000)
    n = len(audio) // hop
    rms = np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(1))
    return np.stack([rms, scale * np.ones(n)], 1)


# ---------------------------------------------------------------------------------------------
# Which track is the labelled person


def test_choose_tracks_rules_and_named_faces():
    stats = {
        0: {"n": 100, "area": 900.0, "cx": 500.0},  # right, small, long
        1: {"n": 80, "area": 2500.0, "cx": 100.0},  # left, large
        2: {"n": 10, "area": 9000.0, "cx": 300.0},  # a huge passer-by, 10 frames
    }
    assert choose_tracks(stats, []) == [2]  # largest mean box, whatever its length
    assert choose_tracks(stats, [], "longest") == [0]
    assert choose_tracks(stats, [], "all") == [0, 1, 2]
    # named faces look only at major tracks (>= half the longest), left to right
    assert choose_tracks(stats, ["0", "1", "2"]) == [1, 0, None]
    assert choose_tracks(stats, ["left", "right"]) == [1, 0]
    assert choose_tracks({5: stats[0]}, ["left"]) == [None]  # one face: left of what?
    assert choose_tracks({}, [None]) == [None] and choose_tracks({}, []) == []


# ---------------------------------------------------------------------------------------------
# Audio features


def test_logmel_tone_lands_in_its_band_and_stacks_per_frame():
    cfg = AudioFeatureConfig()
    rate = cfg.rate
    t = np.arange(rate) / rate  # 1 s
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = LogMel(cfg)(tone, rate)
    assert feats.shape == (1 + rate // 160, 80)  # one frame per 10 ms, centred
    fb = mel_filterbank(80, cfg.n_fft, rate)
    band = int(np.argmax(fb[:, int(round(1000 * cfg.n_fft / rate))]))
    assert abs(int(np.argmax(feats[50])) - band) <= 1
    # stacking: video frame k gets feature frames 4k .. 4k+3 at 25 fps
    f = np.arange(20, dtype=np.float32)[:, None]
    stacked = stack_per_frame(f, 6, 25.0, 10.0, 4)
    assert stacked.shape == (6, 4)
    np.testing.assert_array_equal(stacked[1], [4, 5, 6, 7])
    np.testing.assert_array_equal(stacked[5], [19, 19, 19, 19])  # past the audio: last frame
    per_frame = frame_features(tone, rate, 25, 25.0, cfg)
    assert per_frame.shape == (25, 320) and feature_dim(cfg, 25.0) == 320
    raw = frame_features(tone, rate, 25, 25.0, cfg.model_copy(update={"normalise": "none"}))
    np.testing.assert_allclose(raw[3, 80:160], feats[13], rtol=1e-6)  # frame 3, 2nd of 4
    z = (feats - feats.mean(0)) / feats.std(0)  # per-utterance normalisation, per dimension
    np.testing.assert_allclose(per_frame[3, 80:160], z[13], atol=1e-4)
    with pytest.raises(ValueError, match="16000 Hz"):
        LogMel(cfg)(tone, 8000)


def test_custom_extractor_plugs_in_by_import_path():
    cfg = AudioFeatureConfig(
        extractor="tests.test_preprocess:energy_extractor", kwargs={"scale": 3.0}, normalise="none"
    )
    audio = np.zeros(16000, np.float32)
    audio[8000:] = 0.5
    feats = frame_features(audio, 16000, 25, 25.0, cfg)
    assert feats.shape == (25, 8) and feature_dim(cfg, 25.0) == 8
    assert feats[0, 0] == 0 and feats[-1, 0] == pytest.approx(0.5) and feats[0, 1] == 3.0
    with pytest.raises(ValueError, match="not a callable"):
        frame_features(audio, 16000, 25, 25.0, cfg.model_copy(update={"extractor": "json:nope"}))


# ---------------------------------------------------------------------------------------------
# The job on the real clips


def write_labels(path, videos_root):
    """Generic CSV: GRID clips arousal = t/3, valence = -t/3 at 10 Hz; the two-speaker clip
    face 0 (left) +0.5 / face 1 (right) -0.5 constant."""
    rows = ["video,time_s,arousal,valence,face"]
    for name in GRID:
        rows += [f"{name},{k / 10:.1f},{k / 30:.6f},{-k / 30:.6f}," for k in range(31)]
    for face, val in ((0, 0.5), (1, -0.5)):
        rows += [f"grid_two_speakers_sbs.mp4,{k / 10:.1f},{val},{val},{face}" for k in range(31)]
    rows += ["noface_sky_360p.mp4,0.0,0,0,", "corrupt.mp4,0.0,0,0,"]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in [*GRID, "grid_two_speakers_sbs.mp4", "noface_sky_360p.mp4"]:
        (root / name).symlink_to(asset(f"videos/{name}"))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" * 50)
    write_labels(tmp_path / "labels.csv", root)
    return root


def test_preprocess_on_ray_to_s3_then_resume(ray_local, s3_server, s3_bucket, videos, tmp_path):
    over = (
        face_overrides()
        + FAST
        + [
            f"data.videos={videos}",
            f"data.labels={tmp_path / 'labels.csv'}",
            f"data.shards=s3://{s3_bucket}/shards",
            f"storage.endpoint_url={s3_server}",
        ]
    )
    cfg = load_config(None, over)
    summary = run_preprocess(cfg)
    assert (summary["ok"], summary["no_face"], summary["failed"]) == (4, 1, 1)
    assert summary["sequences"] == 5 and summary["processed"] == 6
    root = f"s3://{s3_bucket}/shards"
    status = {
        r["uri"].rsplit("/", 1)[-1]: r for r in read_shard_status(root, cfg.storage).to_pylist()
    }
    assert status["corrupt.mp4"]["status"] == "failed" and status["corrupt.mp4"]["reason"]
    assert status["noface_sky_360p.mp4"]["reason"] == "no face track found"

    seqs = read_sequences(root, cfg.storage)
    by_name = {}
    for s in seqs:
        by_name.setdefault(s["uri"].rsplit("/", 1)[-1], []).append(s)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    for name in GRID:
        (s,) = by_name[name]
        assert s["has_audio"] and s["face"] == "largest" and s["n_frames"] >= 70
        table = pq.read_table(f"{s3_bucket}/shards/{s['shard']}", filesystem=fs)
        assert table.schema.equals(CLIP_SHARD)
        fr = read_sequence(s, cfg.storage, audio=True)
        assert fr["crops"].shape == (s["n_frames"], 96, 96) and fr["crops"].std() > 10
        t = fr["frame_index"] / 25.0
        labelled = t <= 3.0
        np.testing.assert_allclose(fr["arousal"][labelled], t[labelled] / 3, atol=1e-5)
        np.testing.assert_allclose(fr["valence"][labelled], -t[labelled] / 3, atol=1e-5)
        assert fr["audio_feat"].shape == (s["n_frames"], 320)
        # speech is louder than GRID's leading silence in the log-mel energy
        energy = fr["audio_feat"][:, :80].mean(1)
        assert energy[30:50].mean() > energy[:5].mean() + 0.5
    two = sorted(by_name["grid_two_speakers_sbs.mp4"], key=lambda s: s["face"])
    assert [s["face"] for s in two] == ["0", "1"] and not any(s["has_audio"] for s in two)
    left, right = (read_sequence(s, cfg.storage) for s in two)
    np.testing.assert_allclose(left["arousal"], 0.5)
    np.testing.assert_allclose(right["valence"], -0.5)
    # face "0" is the leftmost person: the crops match grid_bbaf2n's (the clip placed left)
    solo = read_sequence(by_name["grid_bbaf2n.mpg"][0], cfg.storage)["crops"][10:60]

    def diff(a):
        return float(np.abs(a["crops"][10:60].astype(float) - solo).mean())

    assert diff(left) < 0.6 * diff(right)

    # a rerun does nothing; a changed label setting redoes every video
    again = run_preprocess(cfg)
    assert again["processed"] == 0 and again["skipped"] == 6 and again["ok"] == 4
    changed = load_config(None, over + ["data.time_scale=0.5"])
    assert preprocess_hash(changed) != preprocess_hash(cfg)
    assert preprocess_hash(load_config(None, over + ["data.actors=3"])) == preprocess_hash(cfg)


def test_preprocess_cli_local_matches_ray_stage(ray_local, videos, tmp_path, capsys):
    """The in-process runner (through the CLI) gives the same crops as the Ray actor."""
    one = tmp_path / "one"
    one.mkdir()
    (one / GRID[0]).symlink_to(asset(f"videos/{GRID[0]}"))
    cut = "video.end_s=1.2"  # the first 30 frames: the same crops either way is the point
    sets = []
    for item in face_overrides() + FAST + [cut, f"data.videos={one}"]:
        sets += ["--set", item]
    code = main(["preprocess", "--local", "-o", str(tmp_path / "local"), *sets])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] == 1 and out["splits"] == {"pretext": 1}
    cfg = load_config(
        None,
        face_overrides() + FAST + [cut, f"data.videos={one}", f"data.shards={tmp_path / 'ray'}"],
    )
    assert run_preprocess(cfg)["ok"] == 1
    (a,) = read_sequences(str(tmp_path / "local"))
    (b,) = read_sequences(str(tmp_path / "ray"))
    fa, fb = read_sequence(a, audio=True), read_sequence(b, audio=True)
    np.testing.assert_array_equal(fa["crops"], fb["crops"])
    np.testing.assert_allclose(fa["audio_feat"], fb["audio_feat"], atol=1e-6)
    assert np.isnan(fa["arousal"]).all()  # unlabelled folder: pretext data
