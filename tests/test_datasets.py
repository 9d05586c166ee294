"""Dataset readers on small files in each dataset's exact format; label resampling; splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.train import DataConfig
from training.datasets import read_dataset
from training.datasets.afewva import parse_afewva
from training.datasets.affwild2 import parse_affwild2
from training.datasets.avec2019 import parse_ces
from training.datasets.generic import parse_generic
from training.datasets.items import (
    LabelTrack,
    VideoItem,
    normalise_split,
    resample_labels,
    split_by_subject,
    split_from_dirs,
)
from training.datasets.recola import parse_arff, parse_gold_standard
from training.datasets.sewa import parse_sewa_csv, subject_of


def touch_video(path):
    """A placeholder video file: readers only match names (preprocess opens them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


# ---------------------------------------------------------------------------------------------
# SEWA


SEWA_A = """Time;Annotator1;Annotator2;Annotator3
0.00;0.10;0.20;0.30
0.02;0.20;;0.40
0.04;;;
"""


def test_sewa_csv_mean_of_annotators_header_and_missing():
    t, m, n = parse_sewa_csv(SEWA_A)
    np.testing.assert_allclose(t, [0.0, 0.02, 0.04])
    assert n == 3
    np.testing.assert_allclose(m[:2], [0.2, 0.3])  # annotator 2 missing at 0.02: mean of two
    assert np.isnan(m[2])  # nobody rated
    # comma-separated, no header, trailing delimiter
    t2, m2, _ = parse_sewa_csv("0.0,1.0,0.0,\n0.1,0.5,0.5,\n")
    np.testing.assert_allclose(m2, [0.5, 0.5])


def test_sewa_reader_condition_subject_split(tmp_path):
    labels = tmp_path / "labels" / "Train_Set"
    labels.mkdir(parents=True)
    seg = "C1_S012_P023_VC1_001234_001567"
    for cond in ("A", "V", "AV"):
        val = {"A": "0.9", "V": "-0.4", "AV": "0.0"}[cond]
        (labels / f"{seg}_Arousal_{cond}_Aligned.csv").write_text("0;0.1;0.3\n0.5;0.2;0.4\n")
        (labels / f"{seg}_Valence_{cond}_Aligned.csv").write_text(f"0;{val};{val}\n0.5;0;0\n")
    (labels / "S099_Valence_V_Aligned.csv").write_text("0;0.1\n")  # no arousal: skipped
    touch_video(tmp_path / "videos" / f"{seg}.avi")
    cfg = DataConfig(
        dataset="sewa", videos=str(tmp_path / "videos"), labels=str(tmp_path / "labels")
    )
    (item,) = read_dataset(cfg)
    assert item.subject == "S012" and item.split == "train" and item.key == seg
    lt = item.labels[0]
    np.testing.assert_allclose(lt.arousal, [0.2, 0.3])
    np.testing.assert_allclose(lt.valence, [-0.4, 0.0])  # condition V is the default
    (item_a,) = read_dataset(cfg.model_copy(update={"sewa_condition": "A"}))
    np.testing.assert_allclose(item_a.labels[0].valence, [0.9, 0.0])
    assert subject_of("S001_002") == "S001" and subject_of("noname") == "noname"


# ---------------------------------------------------------------------------------------------
# AVEC 2019 CES


CES = """name;timestamp;arousal;valence;liking
Train_DE_01;0.0;0.1;-0.2;0.0
Train_DE_01;0.1;0.15;-0.25;0.0
Train_DE_01;0.2;?;-0.3;0.0
Devel_HU_03;0.0;0.5;0.5;0.1
"""


def test_avec2019_ces_semicolons_groups_and_missing(tmp_path):
    seqs = parse_ces(CES)
    t, a, v = seqs["Train_DE_01"]
    np.testing.assert_allclose(t, [0.0, 0.1, 0.2])
    assert np.isnan(a[2]) and v[2] == pytest.approx(-0.3)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "ces.csv").write_text(CES)
    touch_video(tmp_path / "v" / "Train_DE_01.avi")
    touch_video(tmp_path / "v" / "Devel_HU_03.avi")
    items = read_dataset(
        DataConfig(dataset="avec2019", videos=str(tmp_path / "v"), labels=str(tmp_path / "labels"))
    )
    assert [(i.key, i.split) for i in items] == [
        ("Devel_HU_03", "validation"),
        ("Train_DE_01", "train"),
    ]
    with pytest.raises(ValueError, match="header"):
        parse_ces("name;time;x\n")


# ---------------------------------------------------------------------------------------------
# RECOLA / AVEC 2016 ARFF


def arff(name: str, rows: list[tuple[float, float]]) -> str:
    head = (
        "@relation GoldStandard\n\n\n@attribute Instance_name string\n@attribute frameTime "
        "numeric\n@attribute GoldStandard numeric\n\n@data\n\n"
    )  # 9 header lines, as the AVEC 2016 files
    assert head.count("\n") == 9
    return head + "".join(f"'{name}',{t:.2f},{v:.6f}\n" for t, v in rows)


def test_recola_arff_header_and_rows(tmp_path):
    text = arff("train_1", [(0.0, 0.1), (0.04, -0.2), (0.08, 0.3)])
    names, data = parse_arff(text)
    assert names == ["Instance_name", "frameTime", "GoldStandard"] and data.shape == (3, 3)
    t, g = parse_gold_standard(text)
    np.testing.assert_allclose(t, [0, 0.04, 0.08])
    np.testing.assert_allclose(g, [0.1, -0.2, 0.3])
    root = tmp_path / "ratings_gold_standard"
    for dim, sign in (("arousal", 1), ("valence", -1)):
        (root / dim).mkdir(parents=True)
        for name in ("train_1", "dev_2"):
            rows = [(k * 0.04, sign * k / 10) for k in range(5)]
            (root / dim / f"{name}.arff").write_text(arff(name, rows))
    touch_video(tmp_path / "video" / "train_1.mp4")
    touch_video(tmp_path / "video" / "dev_2.mp4")
    items = read_dataset(
        DataConfig(dataset="recola", videos=str(tmp_path / "video"), labels=str(root))
    )
    assert [(i.key, i.split) for i in items] == [("dev_2", "validation"), ("train_1", "train")]
    np.testing.assert_allclose(items[1].labels[0].valence, -items[1].labels[0].arousal)
    with pytest.raises(ValueError, match="@data"):
        parse_arff("@relation x\n@attribute a numeric\n")


@pytest.mark.parametrize("odd", ["P16", "recola_7"])
def test_recola_file_outside_train_dev_is_refused_or_placed_by_the_manifest(tmp_path, odd):
    # a stem with no train/dev/test prefix used to fall silently into a hash split
    root = tmp_path / "ratings_gold_standard"
    for dim in ("arousal", "valence"):
        (root / dim).mkdir(parents=True)
        for name in ("train_1", odd):
            (root / dim / f"{name}.arff").write_text(arff(name, [(0.0, 0.1), (0.04, 0.2)]))
    for name in ("train_1", odd):
        touch_video(tmp_path / "video" / f"{name}.mp4")
    cfg = DataConfig(dataset="recola", videos=str(tmp_path / "video"), labels=str(root))
    with pytest.raises(ValueError) as e:
        read_dataset(cfg)
    assert f"{odd}.arff" in str(e.value) and "data.manifest" in str(e.value)
    (tmp_path / "m.csv").write_text(f"video,split\n{odd},dev\n")
    items = read_dataset(cfg.model_copy(update={"manifest": str(tmp_path / "m.csv")}))
    assert [(i.key, i.split) for i in items] == sorted([(odd, "validation"), ("train_1", "train")])


# ---------------------------------------------------------------------------------------------
# Aff-Wild2


def test_affwild2_order_missing_and_left_right(tmp_path):
    text = "valence,arousal\n0.5,0.1\n-5,-5\n-0.25,0.75\n"
    v, a = parse_affwild2(text)
    np.testing.assert_allclose(v[[0, 2]], [0.5, -0.25])
    np.testing.assert_allclose(a[[0, 2]], [0.1, 0.75])
    assert np.isnan(v[1]) and np.isnan(a[1])
    with pytest.raises(ValueError, match="valence,arousal"):
        parse_affwild2("arousal,valence\n0,0\n")
    lab = tmp_path / "VA_Estimation_Challenge" / "Validation_Set"
    lab.mkdir(parents=True)
    (lab / "10-60-1280x720_left.txt").write_text(text)
    (lab / "10-60-1280x720_right.txt").write_text(text)
    (lab / "solo.txt").write_text(text)
    touch_video(tmp_path / "videos" / "10-60-1280x720.mp4")
    touch_video(tmp_path / "videos" / "solo.avi")
    items = read_dataset(
        DataConfig(dataset="affwild2", videos=str(tmp_path / "videos"), labels=str(lab.parent))
    )
    two = next(i for i in items if i.key == "10-60-1280x720")
    assert [t.face for t in two.labels] == ["left", "right"] and two.split == "validation"
    lt = two.labels[0]
    assert lt.time_s is None and list(lt.frame) == [0, 1, 2]
    np.testing.assert_allclose(lt.times(25.0), [0, 0.04, 0.08])  # frame i -> line i + 2
    assert next(i for i in items if i.key == "solo").labels[0].face is None


# ---------------------------------------------------------------------------------------------
# AFEW-VA


def test_afewva_json_scaled_and_split_by_actor(tmp_path):
    doc = {
        "actor": "Jane Doe",
        "video_id": "001",
        "frames": {
            "00001": {"valence": -10, "arousal": 5, "landmarks": [[0, 0]] * 68},
            "00000": {"valence": 10, "arousal": 0, "landmarks": [[0, 0]] * 68},
            "00002": {"valence": None, "arousal": -2, "landmarks": [[0, 0]] * 68},
        },
    }
    vid, actor, idx, a, v = parse_afewva(json.dumps(doc))
    assert (vid, actor) == ("001", "Jane Doe") and list(idx) == [0, 1, 2]
    np.testing.assert_allclose(a, [0.0, 0.5, -0.2])
    assert v[0] == 1.0 and v[1] == -1.0 and np.isnan(v[2])
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "001.json").write_text(json.dumps(doc))
    touch_video(tmp_path / "videos" / "001.mp4")
    (item,) = read_dataset(
        DataConfig(dataset="afewva", videos=str(tmp_path / "videos"), labels=str(tmp_path / "001"))
    )
    assert item.subject == "Jane Doe"
    assert item.split == split_by_subject("Jane Doe", (0.6, 0.2, 0.2))


# ---------------------------------------------------------------------------------------------
# LRS3 and the generic CSV


def test_lrs3_unlabelled_speakers_and_subsets(tmp_path):
    for rel in ("pretrain/spk1/00001.mp4", "trainval/spk2/00002.mp4", "test/spk3/00003.mp4"):
        touch_video(tmp_path / rel)
        (tmp_path / rel).with_suffix(".txt").write_text("Text:  HELLO\n")
    items = read_dataset(DataConfig(dataset="lrs3", videos=str(tmp_path)))
    assert [(i.subject, i.split, len(i.labels)) for i in items] == [
        ("spk1", "pretext", 0),
        ("spk3", "test", 0),
        ("spk2", "pretext", 0),
    ]


def test_generic_csv_faces_manifest_and_unlabelled(tmp_path):
    text = (
        "video,time_s,arousal,valence,face\n"
        "videos/a.mp4,0.04,0.2,0.1,0\nvideos/a.mp4,0.0,0.1,0.0,0\n"
        "videos/a.mp4,0.0,-0.1,-0.5,1\nvideos/b.mp4,0.0,nan,,\n"
    )
    parsed = parse_generic(text)
    lt = parsed[("videos/a.mp4", "0")]
    np.testing.assert_allclose(lt.time_s, [0.0, 0.04])  # sorted by time
    assert np.isnan(parsed[("videos/b.mp4", None)].arousal[0])
    (tmp_path / "labels.csv").write_text(text)
    (tmp_path / "manifest.csv").write_text("video,identity,split\nvideos/a.mp4,id007,test\n")
    touch_video(tmp_path / "videos" / "a.mp4")
    touch_video(tmp_path / "videos" / "b.mp4")
    cfg = DataConfig(
        videos=str(tmp_path),
        labels=str(tmp_path / "labels.csv"),
        manifest=str(tmp_path / "manifest.csv"),
    )
    a, b = read_dataset(cfg)
    assert (a.key, a.subject, a.split) == ("videos/a.mp4", "id007", "test")
    assert [t.face for t in a.labels] == ["0", "1"]
    assert b.subject == "b" and b.split == split_by_subject("b", cfg.split_fractions)
    # round trip through the JSON that travels in Ray Data rows (NaN kept)
    back = VideoItem.labels_from_json(b.labels_json())
    assert np.isnan(back[0].arousal[0])
    # without labels: every video, unlabelled, for pretext tasks
    items = read_dataset(DataConfig(videos=str(tmp_path / "videos")))
    assert [(i.key, i.split, i.labels) for i in items] == [
        ("a.mp4", "pretext", []),
        ("b.mp4", "pretext", []),
    ]
    with pytest.raises(ValueError, match="lacks columns"):
        parse_generic("video,t,arousal\n")


# ---------------------------------------------------------------------------------------------
# Shared helpers


def test_resample_labels_interpolates_and_leaves_gaps_unlabelled():
    t = np.arange(0, 1.01, 0.1)  # 0.1 s step (AVEC CES)
    y = t.copy()
    y[5] = np.nan  # one missing annotation: bridged (nearest valid within one step)
    y[8:] = np.nan  # a missing tail: unlabelled beyond one step
    ft = np.arange(0, 1.5, 0.04)  # 25 fps frames
    out = resample_labels(t, y, ft)
    near = ft <= 0.7 + 0.1 + 1e-9
    np.testing.assert_allclose(out[ft <= 0.7], ft[ft <= 0.7], atol=1e-6)
    assert np.isnan(out[~near]).all()
    # the annotation step is the default gap; an explicit one overrides
    assert np.isfinite(resample_labels(t, y, np.array([0.95]), max_gap_s=0.3)).all()
    assert np.isnan(resample_labels(t, np.full_like(t, np.nan), ft)).all()


def test_label_track_validation_and_splits():
    with pytest.raises(ValueError, match="exactly one"):
        LabelTrack(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="lengths"):
        LabelTrack(np.zeros(2), np.zeros(3), time_s=np.zeros(2))
    with pytest.raises(ValueError, match="frame rate"):
        LabelTrack(np.zeros(1), np.zeros(1), frame=np.zeros(1)).times(None)
    assert split_from_dirs("s3://b/SEWA/Validation_Set/x.csv") == "validation"
    assert split_from_dirs("/data/devel/a.csv") == "validation"
    assert split_from_dirs("/data/train_1.arff") is None  # file names are not folders
    assert normalise_split("Test_Set") == "test" and normalise_split("pretext") == "pretext"
    with pytest.raises(ValueError, match="unknown split"):
        normalise_split("holdout")
    # stable and roughly proportional
    names = [f"S{i:03d}" for i in range(400)]
    splits = [split_by_subject(n, (0.6, 0.2, 0.2)) for n in names]
    assert splits == [split_by_subject(n, (0.6, 0.2, 0.2)) for n in names]
    assert 0.5 < splits.count("train") / 400 < 0.7


def test_keep_unlabelled_adds_unannotated_videos(tmp_path):
    (tmp_path / "labels.csv").write_text("video,time_s,arousal,valence\na.mp4,0,0.1,0.2\n")
    touch_video(tmp_path / "v" / "a.mp4")
    touch_video(tmp_path / "v" / "Test_Set" / "extra.mp4")
    cfg = DataConfig(videos=str(tmp_path / "v"), labels=str(tmp_path / "labels.csv"))
    assert [i.key for i in read_dataset(cfg)] == ["a.mp4"]
    items = read_dataset(cfg.model_copy(update={"keep_unlabelled": True}))
    extra = next(i for i in items if i.key == "Test_Set/extra.mp4")
    assert (extra.split, extra.subject, extra.labels) == ("test", "extra", [])


def test_afewva_frames_become_a_video(tmp_path):
    import cv2

    from pipeline.video import VideoReader
    from training.datasets.afewva import frames_to_video

    (tmp_path / "001").mkdir()
    for i in range(5):
        img = np.full((48, 64, 3), 40 * i, np.uint8)
        cv2.imwrite(str(tmp_path / "001" / f"{i:05d}.png"), img)
    out = frames_to_video(tmp_path / "001", tmp_path / "001.mp4", fps=25.0)
    with VideoReader(out) as r:
        frames = np.concatenate([c.frames for c in r.chunks(25.0)])
    assert len(frames) == 5 and abs(int(frames[3].mean()) - 120) <= 2
