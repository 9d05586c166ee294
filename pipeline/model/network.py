"""The SS-VAERR network (METHOD.md, "Downstream model"): Conv3d front-end + per-frame
lip-reading ResNet-18 trunk (together the `Encoder`, what pretext tasks train) + bidirectional
GRU + per-frame head giving, for arousal and valence each, bin logits and a value in [-1, 1].

Variable lengths: padded frames are zeroed before the only temporal operator of the encoder
(the Conv3d, whose zero padding they then mimic), excluded from every batch-norm statistic and
from the trunk (only valid frames are gathered), and the GRU runs on packed sequences. So a
padded batch gives, frame for frame, the result of each sequence run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = [
    "BasicBlock",
    "Encoder",
    "Frontend3D",
    "ResNetTrunk",
    "SSVAERR",
    "SSVAERROutput",
    "lengths_to_mask",
    "predict",
    "uniform_bin_centres",
]


def uniform_bin_centres(bins: int, low: float = -1.0, high: float = 1.0) -> Tensor:
    """Centres of `bins` equal bins over [low, high] -> float32 [bins]."""
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return ((edges[:-1] + edges[1:]) / 2).float()


def lengths_to_mask(lengths: Tensor | Sequence[int] | None, batch: int, time: int) -> Tensor | None:
    """Valid-frame mask [B, T] bool from per-sequence lengths [B] (None -> None: all valid)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > time:
        raise ValueError(f"lengths must lie in [1, {time}], got {lengths.tolist()}")
    return torch.arange(time)[None, :] < lengths[:, None]


def _act(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    raise ValueError(f"unknown activation {kind!r} (relu or prelu)")


class Frontend3D(nn.Module):
    """Conv3d(1->C, k(5,7,7), s(1,2,2), p(2,3,3), no bias) + BN3d + act + MaxPool3d(1,3,3).

    Time is never strided: [B, 1, T, 96, 96] -> per frame [C, 24, 24].
    """

    def __init__(self, channels: int = 64, activation: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            1, channels, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False
        )
        self.bn = nn.BatchNorm3d(channels)
        self.act = _act(activation, channels)
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.out_channels = channels

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, T, H, W] normalised float (padded frames already 0); mask [B, T] bool or None.

        Returns the valid frames' feature maps [N, C, H/4, W/4], N = mask.sum() (or B*T),
        in row-major (batch, time) order.
        """
        y = self.conv(x.unsqueeze(1))  # [B, C, T, h, w]
        y = y.transpose(1, 2)  # [B, T, C, h, w]
        y = y[mask] if mask is not None else y.flatten(0, 1)  # [N, C, h, w]
        # BN3d over [1, C, N, h, w]: statistics from valid frames only.
        y = y.transpose(0, 1).unsqueeze(0)
        y = self.pool(self.act(self.bn(y)))
        return y.squeeze(0).transpose(0, 1)  # [N, C, h', w']


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 convs with BN, identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = _act(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = _act(activation, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        """[N, C_in, H, W] -> [N, C_out, H/stride, W/stride]."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class ResNetTrunk(nn.Module):
    """Lip-reading ResNet applied per frame: no stem, 4 stages (strides 1/2/2/2), global pool.

    [N, C0, 24, 24] -> 24/12/6/3 -> [N, widths[-1]].
    """

    def __init__(
        self,
        in_channels: int = 64,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("widths and blocks need 4 entries each (one per stage)")
        stages = []
        inplanes = in_channels
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(inplanes, width, stride if j == 0 else 1, activation))
                inplanes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = int(widths[-1])

    def forward(self, x: Tensor) -> Tensor:
        """[N, C0, H, W] -> [N, D]."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


class Encoder(nn.Module):
    """Front-end + trunk: face crops -> one D-dim feature per frame (what pretext tasks train).

    Accepts uint8 crops (normalised here: (x/255 - mean)/std) or already-normalised floats.
    """

    def __init__(
        self,
        frontend_channels: int = 64,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        activation: str = "relu",
        mean: float = 0.421,
        std: float = 0.165,
    ) -> None:
        super().__init__()
        self.frontend = Frontend3D(frontend_channels, activation)
        self.trunk = ResNetTrunk(frontend_channels, widths, blocks, activation)
        self.mean = float(mean)
        self.std = float(std)
        self.out_dim = self.trunk.out_dim
        _init_weights(self)

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 pixels -> (x/255 - mean)/std in the parameters' dtype; floats pass unchanged."""
        dtype = self.frontend.conv.weight.dtype
        if x.dtype == torch.uint8:
            return (x.to(dtype) / 255.0 - self.mean) / self.std
        if not torch.is_floating_point(x):
            raise TypeError(f"crops must be uint8 or float, got {x.dtype}")
        return x.to(dtype)

    def forward(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """x [B, T, H, W] (or [B, 1, T, H, W]); lengths [B] or None -> features [B, T, D].

        Padded frames' features are 0 and never influence valid frames.
        """
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"expected one (grayscale) channel, got shape {tuple(x.shape)}")
            x = x[:, 0]
        if x.dim() != 4:
            raise ValueError(f"expected crops [B, T, H, W], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        mask = lengths_to_mask(lengths, b, t)
        x = self.normalise(x)
        if mask is not None:
            mask = mask.to(x.device)
            x = x * mask[:, :, None, None].to(x.dtype)
        feats = self.trunk(self.frontend(x, mask))  # [N, D]
        if mask is None:
            return feats.view(b, t, -1)
        out = feats.new_zeros(b, t, feats.shape[-1])
        out[mask] = feats
        return out


class SSVAERROutput(NamedTuple):
    """Per-frame outputs. Values in [-1, 1]; logits over `bins` bins (softmax -> probabilities)."""

    arousal: Tensor  # [B, T]
    valence: Tensor  # [B, T]
    arousal_logits: Tensor  # [B, T, bins]
    valence_logits: Tensor  # [B, T, bins]
    mask: Tensor | None  # [B, T] bool (valid frames), None when every frame is valid

    @property
    def arousal_probs(self) -> Tensor:
        """Arousal bin distribution [B, T, bins] (softmax of the logits)."""
        return self.arousal_logits.float().softmax(-1)

    @property
    def valence_probs(self) -> Tensor:
        """Valence bin distribution [B, T, bins] (softmax of the logits)."""
        return self.valence_logits.float().softmax(-1)


class SSVAERR(nn.Module):
    """Encoder + bidirectional GRU + per-frame head [arousal bins | a | valence bins | v].

    `bin_centres` (buffer [2, bins]: arousal, valence) records the value each bin stands for;
    uniform over [-1, 1] until training replaces it (k-means option). It travels in the state
    dict, so a checkpoint always carries the centres its CE head was trained with.
    """

    def __init__(
        self,
        encoder: Encoder,
        bins: int = 20,
        gru_hidden: int = 256,
        gru_layers: int = 2,
        arch: str = "custom",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.bins = int(bins)
        self.encoder = encoder
        self.gru = nn.GRU(
            encoder.out_dim,
            gru_hidden,
            num_layers=gru_layers,
            batch_first=True,
            bidirectional=True,
        )
        self.head = nn.Linear(2 * gru_hidden, 2 * (self.bins + 1))
        self.register_buffer("bin_centres", uniform_bin_centres(self.bins).repeat(2, 1))
        self.finetune_mode = "full"
        self._frozen_modules: tuple[nn.Module, ...] = ()
        self.frozen_batchnorm = "eval"  # or "train": see set_frozen_batchnorm

    def set_bin_centres(self, centres: Tensor | np.ndarray) -> None:
        """Replace the bin centres: [bins] (both targets) or [2, bins] (arousal, valence)."""
        c = torch.as_tensor(np.asarray(centres, dtype=np.float32))
        if c.dim() == 1:
            c = c.repeat(2, 1)
        if c.shape != (2, self.bins):
            raise ValueError(f"bin centres must be [{self.bins}] or [2, {self.bins}]")
        self.bin_centres.copy_(c.to(self.bin_centres.device))

    def freeze(self, modules: tuple[nn.Module, ...], finetune_mode: str) -> None:
        """Freeze exactly `modules` (submodules of this network: requires_grad=False, kept in
        eval mode, so batch-norm statistics stay fixed, across later `train()` calls); every
        other parameter trains. `finetune_mode` names the choice (see apply_finetune_mode)."""
        for p in self.parameters():
            p.requires_grad_(True)
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)
        self._frozen_modules = tuple(modules)
        self.finetune_mode = finetune_mode
        self.train(self.training)

    def set_frozen_batchnorm(self, mode: str) -> None:
        """'eval' (default): frozen parts stay in eval mode, batch-norm running statistics
        fixed; 'train': they follow train()/eval() like the rest, so batch norm there uses
        batch statistics and updates its running ones while training (the public code's
        frozen modes, which only set requires_grad=False)."""
        if mode not in ("eval", "train"):
            raise ValueError(f"frozen batch-norm mode must be eval or train, got {mode!r}")
        self.frozen_batchnorm = mode
        self.train(self.training)

    def train(self, mode: bool = True) -> SSVAERR:
        """As nn.Module.train, but frozen parts (see freeze) stay in eval mode unless
        set_frozen_batchnorm('train')."""
        super().train(mode)
        if self.frozen_batchnorm == "eval":
            for m in self._frozen_modules:
                m.eval()
        return self

    def forward(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None) -> SSVAERROutput:
        """x [B, T, 96, 96] uint8 or normalised float; lengths [B] (frames) or None."""
        b, t = x.shape[0], x.shape[-3]
        feats = self.encoder(x, lengths)  # [B, T, D]
        mask = lengths_to_mask(lengths, b, t)
        if mask is None:
            seq, _ = self.gru(feats)
        else:
            packed = pack_padded_sequence(
                feats, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False
            )
            seq, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=t)
            mask = mask.to(x.device)
        z = self.head(seq)  # [B, T, 2*(bins+1)]
        k = self.bins
        return SSVAERROutput(
            arousal=2 * torch.sigmoid(z[..., k]) - 1,
            valence=2 * torch.sigmoid(z[..., 2 * k + 1]) - 1,
            arousal_logits=z[..., :k],
            valence_logits=z[..., k + 1 : 2 * k + 1],
            mask=mask,
        )


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@torch.inference_mode()
def predict(
    model: SSVAERR,
    crops: np.ndarray | Tensor,
    lengths: Sequence[int] | np.ndarray | Tensor | None = None,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Run the model on aligned face crops; the call the batch-inference stage makes.

    crops: [B, T, 96, 96] uint8 (or normalised float); lengths: valid frames per row or None.
    Runs on the model's device, autocast to `dtype` (float32 | bfloat16 | float16).
    Returns float32 numpy: arousal, valence [B, T] in [-1, 1]; arousal_probs, valence_probs
    [B, T, bins]. Padded frames hold NaN.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(crops).to(device, non_blocking=True)
    if lengths is not None:
        lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.long)
    with torch.autocast(device.type, dtype=_DTYPES[dtype], enabled=dtype != "float32"):
        out = model(x, lengths)
    if was_training:
        model.train()
    res = {
        "arousal": out.arousal.float(),
        "valence": out.valence.float(),
        "arousal_probs": out.arousal_probs,
        "valence_probs": out.valence_probs,
    }
    if out.mask is not None:
        invalid = ~out.mask
        for v in res.values():
            v[invalid] = float("nan")
    return {k: v.cpu().numpy() for k, v in res.items()}
