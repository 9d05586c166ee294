"""Weights in the authors' naming (Instassa/VAERR_SelfSupervisedVE: `frontend3D.*`,
`trunk.layerN.M.relu1/2`, `gru.gru.*`, `gru.fc`, an unused `gru2`) load as our encoder and,
where the heads match, as the whole model: a module tree built here in their naming, fed
the same input, gives the same outputs as our network after loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model import build_model, load_encoder_weights
from pipeline.model.authors import (
    checkpoint_from_authors,
    is_authors_naming,
    load_authors_model,
    rename_authors_state,
)
from schemas.model import ModelConfig


class TheirBlock(nn.Module):
    """Their BasicBlock's names: conv1, bn1, relu1, conv2, bn2, downsample, relu2."""

    def __init__(self, inp: int, out: int, stride: int, prelu: bool) -> None:
        super().__init__()
        act = (lambda c: nn.PReLU(c)) if prelu else (lambda c: nn.ReLU())
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu1 = act(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu2 = act(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(y)) + res)


class TheirGRU(nn.Module):
    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.gru = nn.GRU(512, 256, 2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(512, n_out)


class TheirModel(nn.Module):
    """EmotionModelVideo's module tree: frontend3D (Sequential), trunk (layer1-4), gru, gru2."""

    def __init__(self, bins: int = 20, prelu: bool = False) -> None:
        super().__init__()
        self.bins = bins
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64) if prelu else nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        self.trunk = nn.Module()
        inp = 64
        for i, w in enumerate((64, 128, 256, 512), 1):
            s = 1 if i == 1 else 2
            setattr(self.trunk, f"layer{i}", nn.Sequential(TheirBlock(inp, w, s, prelu),
                                                           TheirBlock(w, w, 1, prelu)))  # fmt: skip
            inp = w
        self.gru = TheirGRU(2 * (bins + 1))
        self.gru2 = TheirGRU(2 * (bins + 1))  # built by their code, never used

    def forward(self, x):  # x [B, T, 96, 96] float, already normalised
        b, t = x.shape[:2]
        f = self.frontend3D(x[:, None])
        f = f.transpose(1, 2).reshape(b * t, 64, f.shape[-2], f.shape[-1])
        for i in range(1, 5):
            f = getattr(self.trunk, f"layer{i}")(f)
        f = f.mean((2, 3)).view(b, t, -1)
        z = self.gru.fc(self.gru.gru(f)[0])
        k = self.bins
        return 2 * torch.sigmoid(z[..., k]) - 1, 2 * torch.sigmoid(z[..., 2 * k + 1]) - 1


def _randomised(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) * 0.2
                    + (0.9 if "running_var" in name else -0.1)
                )
    return m.eval()


@pytest.mark.parametrize("prelu", [False, True])
def test_whole_model_in_their_naming_gives_their_outputs(prelu, tmp_path):
    torch.manual_seed(0)
    theirs = _randomised(TheirModel(prelu=prelu), 1)
    # their checkpoint layout: DataParallel prefix, under "model_state_dict", with extras
    ckpt = {"model_state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()},
            "epoch_idx": 3, "best_prec": 0.5}  # fmt: skip
    assert is_authors_naming(ckpt)
    cfg = ModelConfig(arch="ssvaerr_r18", activation="prelu" if prelu else "relu")
    ours = build_model(cfg).eval()
    report = load_authors_model(ours, ckpt)
    assert report.complete and all(k.startswith("module.gru2.") for k in report.unused)
    assert len(report.unused) == len(theirs.gru2.state_dict())
    x = torch.randn(2, 7, 96, 96)
    with torch.no_grad():
        ta, tv = theirs(x)
        out = ours(x)
    torch.testing.assert_close(out.arousal, ta, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.valence, tv, atol=1e-5, rtol=1e-4)
    # and as a vaerr checkpoint `vaerr infer` loads
    ck = checkpoint_from_authors(ckpt, cfg, "their.pth")
    again = ck.build().eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).valence, tv, atol=1e-5, rtol=1e-4)
    if not prelu:  # the CLI: their file -> a vaerr checkpoint
        from jobs.cli import main
        from pipeline.model import load_checkpoint

        torch.save(ckpt, tmp_path / "theirs.pth")
        out = tmp_path / "ours.pt"
        assert (
            main(["model", "import-authors", str(tmp_path / "theirs.pth"), "--output", str(out)])
            == 0
        )
        with torch.no_grad():
            got = load_checkpoint(str(out)).build().eval()(x).arousal
        torch.testing.assert_close(got, ta, atol=1e-5, rtol=1e-4)


def test_encoder_only_when_the_heads_differ():
    theirs = _randomised(TheirModel(bins=10), 2)  # a head with 10 bins: not ours (20)
    ckpt = {"netG": theirs.state_dict()}  # LiRA pretext checkpoints use "netG"
    ours = build_model(ModelConfig(arch="ssvaerr_r18")).eval()
    with pytest.raises(ValueError, match="head.weight"):
        load_authors_model(ours, ckpt)
    rep = load_encoder_weights(ours, ckpt)  # the encoder: front-end + trunk, all of it
    assert rep.complete and rep.prefix == "encoder."
    x = torch.randn(1, 5, 96, 96)
    with torch.no_grad():
        f = theirs.frontend3D(x[:, None]).transpose(1, 2).reshape(5, 64, 24, 24)
        for i in range(1, 5):
            f = getattr(theirs.trunk, f"layer{i}")(f)
        torch.testing.assert_close(ours.encoder(x)[0], f.mean((2, 3)), atol=1e-5, rtol=1e-4)
    names = rename_authors_state(ckpt).state
    assert (
        "encoder.frontend.conv.weight" in names and "encoder.trunk.layer4.1.conv2.weight" in names
    )
    assert not is_authors_naming({"encoder.frontend.conv.weight": torch.zeros(1)})
