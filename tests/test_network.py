"""The SS-VAERR network: shapes, ranges, bidirectionality, padding, parameter count,
registry and fine-tuning modes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.model import (
    SSVAERR,
    apply_finetune_mode,
    arch_spec,
    build_encoder,
    build_model,
    list_models,
    predict,
)
from schemas.model import ModelConfig


def _crops(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 96, 96), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def tiny() -> SSVAERR:
    torch.manual_seed(0)
    return build_model("ssvaerr_tiny").eval()


@pytest.fixture(scope="module")
def r18() -> SSVAERR:
    torch.manual_seed(0)
    return build_model("ssvaerr_r18").eval()


def _check_output(out, b: int, t: int, bins: int = 20) -> None:
    assert out.arousal.shape == out.valence.shape == (b, t)
    assert out.arousal_logits.shape == out.valence_logits.shape == (b, t, bins)
    for v in (out.arousal, out.valence):
        assert torch.isfinite(v).all() and v.min() >= -1 and v.max() <= 1
    for p in (out.arousal_probs, out.valence_probs):
        assert torch.allclose(p.sum(-1), torch.ones(b, t), atol=1e-5)


@pytest.mark.parametrize("t", [1, 25, 200])
def test_tiny_shapes(tiny, t):
    with torch.no_grad():
        _check_output(tiny(_crops(2, t)), 2, t)


@pytest.mark.parametrize("t", [1, 25])
def test_r18_shapes(r18, t):
    with torch.no_grad():
        out = r18(_crops(1, t))
    _check_output(out, 1, t)
    assert r18.encoder.out_dim == 512


def test_values_saturate_inside_range(tiny):
    """2*sigmoid(z)-1 keeps outputs in [-1, 1] even for extreme head inputs."""
    head = tiny.head
    with torch.no_grad():
        saved = head.bias.clone()
        head.bias.fill_(1e4)
        out = tiny(_crops(1, 3))
        head.bias.copy_(saved)
    assert out.arousal.max() <= 1 and out.valence.max() <= 1


def test_uint8_and_normalised_float_agree(tiny):
    x = _crops(1, 10)
    xf = (x.float() / 255 - 0.421) / 0.165
    with torch.no_grad():
        a, b = tiny(x), tiny(xf)
    assert torch.allclose(a.arousal, b.arousal, atol=1e-6)
    assert torch.allclose(a.valence_logits, b.valence_logits, atol=1e-5)
    with pytest.raises(TypeError):
        tiny(x.long())


def test_bidirectional_later_frame_changes_first_output(tiny):
    x = _crops(1, 30)
    x2 = x.clone()
    x2[0, -1] = 255 - x2[0, -1]  # change only the last frame (far beyond the Conv3d reach)
    with torch.no_grad():
        a, b = tiny(x), tiny(x2)
    assert not torch.allclose(a.arousal[0, 0], b.arousal[0, 0], atol=1e-7)
    assert not torch.allclose(a.valence_logits[0, 0], b.valence_logits[0, 0], atol=1e-7)


def test_padded_batch_equals_unpadded(tiny):
    lengths = [20, 7, 13]
    seqs = [_crops(1, n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.randint(0, 256, (3, 20, 96, 96), dtype=torch.uint8)  # garbage padding
    for i, s in enumerate(seqs):
        batch[i, : lengths[i]] = s[0]
    with torch.no_grad():
        out = tiny(batch, torch.tensor(lengths))
        assert out.mask is not None and out.mask.sum(1).tolist() == lengths
        for i, s in enumerate(seqs):
            alone = tiny(s)
            n = lengths[i]
            assert torch.allclose(out.arousal[i, :n], alone.arousal[0], atol=1e-5)
            assert torch.allclose(out.valence[i, :n], alone.valence[0], atol=1e-5)
            assert torch.allclose(out.arousal_logits[i, :n], alone.arousal_logits[0], atol=1e-4)
        # features of padded frames are zero; valid frames independent of padding content
        feats = tiny.encoder(batch, lengths)
        assert (feats[1, 7:] == 0).all()
    with pytest.raises(ValueError):
        tiny(batch, [21, 1, 1])


def test_padding_excluded_from_batchnorm_statistics():
    """In train mode, BN statistics come from valid frames only."""
    torch.manual_seed(0)
    m1, m2 = build_model("ssvaerr_tiny"), build_model("ssvaerr_tiny")
    m2.load_state_dict(m1.state_dict())
    x = _crops(1, 8)
    padded = torch.cat([x, torch.full((1, 4, 96, 96), 255, dtype=torch.uint8)], 1)
    m1(x)
    m2(padded, [8])
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n


def test_predict_numpy_with_nan_padding(tiny):
    crops = _crops(2, 6).numpy()
    res = predict(tiny, crops, lengths=[6, 4])
    assert set(res) == {"arousal", "valence", "arousal_probs", "valence_probs"}
    assert res["arousal"].dtype == np.float32 and res["arousal"].shape == (2, 6)
    assert res["valence_probs"].shape == (2, 6, 20)
    assert np.isnan(res["arousal"][1, 4:]).all() and np.isfinite(res["arousal"][1, :4]).all()
    assert np.isfinite(res["arousal"][0]).all()
    full = predict(tiny, crops)
    assert np.allclose(full["arousal"][0], res["arousal"][0], atol=1e-5)
    bf16 = predict(tiny, crops, dtype="bfloat16")
    assert np.abs(bf16["arousal"] - full["arousal"]).max() < 0.1
    with pytest.raises(ValueError):
        predict(tiny, crops, dtype="int8")


def test_tiny_forward_is_fast(tiny):
    x = _crops(2, 50)
    with torch.no_grad():
        tiny(x)
        best = min(_timed(tiny, x) for _ in range(5))
    assert best < 1.0, f"tiny forward of [2, 50, 96, 96] took {best:.2f} s"


def _timed(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


# --- parameter count from the layer list -----------------------------------------------------


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers)


def _basic_block(cin: int, cout: int, stride: int) -> int:
    n = _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3) + _bn(cout)
    if stride != 1 or cin != cout:
        n += _conv(cin, cout, 1) + _bn(cout)  # 1x1 projection shortcut
    return n


def _gru(inp: int, hidden: int, layers: int) -> int:
    # per direction: W_ih [3H, in], W_hh [3H, H], b_ih [3H], b_hh [3H]; 2 directions;
    # layers after the first take the 2H concatenated directions
    total = 0
    for layer in range(layers):
        din = inp if layer == 0 else 2 * hidden
        total += 2 * (3 * hidden * din + 3 * hidden * hidden + 2 * 3 * hidden)
    return total


def test_r18_parameter_count(r18):
    bins = 20
    frontend = 1 * 64 * 5 * 7 * 7 + _bn(64)  # Conv3d(1->64, 5x7x7, no bias) + BN3d
    trunk = 0
    cin = 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        trunk += _basic_block(cin, width, stride) + _basic_block(width, width, 1)
        cin = width
    gru = _gru(512, 256, 2)
    head = 512 * 2 * (bins + 1) + 2 * (bins + 1)
    expected = frontend + trunk + gru + head
    assert sum(p.numel() for p in r18.parameters()) == expected
    assert sum(p.numel() for p in r18.encoder.parameters()) == frontend + trunk


# --- registry and config -----------------------------------------------------------------------


def test_registry():
    assert list_models() == ["ssvaerr_r18", "ssvaerr_tiny"]
    with pytest.raises(ValueError, match="ssvaerr_r18"):
        build_model("resnet50")
    cfg = ModelConfig(arch="ssvaerr_tiny", gru_hidden=16, bins=10, activation="prelu")
    m = build_model(cfg)
    assert m.gru.hidden_size == 16 and m.bins == 10 and m.head.out_features == 22
    assert arch_spec(cfg).widths == (8, 16, 32, 64)
    assert any(isinstance(x, nn.PReLU) for x in m.modules())
    with torch.no_grad():
        _check_output(m.eval()(_crops(1, 4)), 1, 4, bins=10)
    enc = build_encoder("ssvaerr_tiny")
    assert enc.out_dim == 64
    assert build_model(ModelConfig(arch="ssvaerr_tiny", finetune="frozen_encoder")).finetune_mode
    with pytest.raises(ValueError):
        ModelConfig(bogus=1)


def test_set_bin_centres(tiny):
    saved = tiny.bin_centres.clone()
    tiny.set_bin_centres(np.linspace(-0.5, 0.5, 20))
    assert torch.allclose(tiny.bin_centres[1], torch.linspace(-0.5, 0.5, 20))
    with pytest.raises(ValueError):
        tiny.set_bin_centres(np.zeros(3))
    tiny.bin_centres.copy_(saved)


# --- fine-tuning modes -------------------------------------------------------------------------


def _trainable(m: nn.Module) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["full", "frozen_frontend", "frozen_encoder"])
def test_finetune_modes_freeze_exactly_what_they_name(mode):
    torch.manual_seed(0)
    m = build_model("ssvaerr_tiny")
    apply_finetune_mode(m, mode)
    names = {n for n, _ in m.named_parameters()}
    frontend = {n for n in names if n.startswith("encoder.frontend.")}
    encoder = {n for n in names if n.startswith("encoder.")}
    frozen = {"full": set(), "frozen_frontend": frontend, "frozen_encoder": encoder}[mode]
    assert frontend and encoder > frontend
    assert _trainable(m) == names - frozen
    # frozen BN layers stay in eval mode through model.train(), so running stats do not move
    m.train()
    bn_modes = {n: mod.training for n, mod in m.named_modules() if "bn" in n.split(".")[-1]}
    for n, training in bn_modes.items():
        assert training == (f"{n}.weight" not in frozen), n
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m(_crops(2, 6))
    (out.arousal.sum() + out.valence_logits.sum()).backward()
    after = m.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        if "running_" in k or "num_batches" in k:
            owner = k.rsplit(".", 1)[0]
            assert moved == (f"{owner}.weight" not in frozen), k
    for n, p in m.named_parameters():
        assert (p.grad is None) == (n in frozen), n
    # switching back to full unfreezes everything
    apply_finetune_mode(m, "full")
    m.train()
    assert _trainable(m) == names and all(mod.training for mod in m.modules())
    with pytest.raises(ValueError):
        apply_finetune_mode(m, "frozen_head")
