"""Pins: the ids that name results must not move under a refactor (issue 14).

`config_hash` keys every status row and rerun decision, `model_id` names the weights in every
timeline row; a change to either silently reprocesses (or wrongly skips) whole corpora. The
literals were computed at commit 4435bd0; change them only with a deliberate format bump.
"""

from __future__ import annotations

from pipeline.model.checkpoint import init_checkpoint, load_checkpoint, save_checkpoint
from schemas.config import VaerrConfig, config_hash, load_config
from schemas.model import ModelConfig


def test_config_hash_of_the_default_config_is_pinned():
    assert config_hash(VaerrConfig()) == "73e6547c1862c4aa"
    # runtime-only fields (device, storage) leave it unchanged
    assert config_hash(load_config(None, ["model.device=cpu", "storage.retry_s=3"])) == (
        "73e6547c1862c4aa"
    )


def test_config_hash_of_a_non_default_config_is_pinned():
    sets = ["infer.window_frames=16", "infer.hop_frames=8", "faces.align.crop_size=64"]
    cfg = load_config(None, [*sets, "video.fps=10"])
    assert config_hash(cfg) == "aec9d5ff75a3f625"
    assert config_hash(cfg, ("video",)) == "1dc70e3c3a2cdc37"


def test_model_id_of_a_seeded_tiny_checkpoint_is_pinned(tmp_path):
    ckpt = init_checkpoint(ModelConfig(arch="ssvaerr_tiny"), seed=7)
    assert ckpt.model_id == "ssvaerr_tiny-2253c96e232a"
    path = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, path)
    assert load_checkpoint(path).model_id == "ssvaerr_tiny-2253c96e232a"
