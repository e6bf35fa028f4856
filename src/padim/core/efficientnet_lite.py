"""EfficientNet-Lite0/Lite2 (Tan and Le; TensorFlow's "lite" variants: ReLU6, no
squeeze-excitation, fixed stem and head) in plain torch.

The same modules, parameter names and order as timm's `tf_efficientnet_liteN`, so the same
state dicts load, and outputs equal timm's (tests/core/test_backbones.py compares them). Written
out because importing timm (and the torchvision it imports) costs about 2 s in every process
that builds a backbone, as long as torch's own import; these networks are 80 lines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# per stage: (block kind, repeats, kernel, stride, expansion, output channels)
ARCHITECTURES = {
    "tf_efficientnet_lite0": [
        ("ds", 1, 3, 1, 1, 16),
        ("ir", 2, 3, 2, 6, 24),
        ("ir", 2, 5, 2, 6, 40),
        ("ir", 3, 3, 2, 6, 80),
        ("ir", 3, 5, 1, 6, 112),
        ("ir", 4, 5, 2, 6, 192),
        ("ir", 1, 3, 1, 6, 320),
    ],
    "tf_efficientnet_lite2": [  # width x1.1, depth x1.2 (first and last stages fixed)
        ("ds", 1, 3, 1, 1, 16),
        ("ir", 3, 3, 2, 6, 24),
        ("ir", 3, 5, 2, 6, 48),
        ("ir", 4, 3, 2, 6, 88),
        ("ir", 4, 5, 1, 6, 120),
        ("ir", 5, 5, 2, 6, 208),
        ("ir", 1, 3, 1, 6, 352),
    ],
}
STEM, HEAD, CLASSES = 32, 1280, 1000


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: for strides above 1 the padding depends
    on the input size and puts the odd pixel at the bottom/right (timm's Conv2dSame)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        static = stride == 1
        super().__init__(
            cin, cout, kernel, stride, padding=(kernel - 1) // 2 if static else 0,
            groups=groups, bias=False,
        )  # fmt: skip
        self.dynamic = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            ih, iw = x.shape[-2:]
            ph = _same(ih, self.kernel_size[0], self.stride[0])
            pw = _same(iw, self.kernel_size[1], self.stride[1])
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _same(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm (TF's epsilon 1e-3) then ReLU6, or nothing after it."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=1e-3)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(cin, cin, kernel, stride, groups=cin)
        self.bn1 = BatchNormAct(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = BatchNormAct(cout, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BatchNormAct(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct(cout, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """The whole classifier (stem, seven stages, head), named as timm names it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM, 3, 2)
        self.bn1 = BatchNormAct(STEM)
        stages, cin = [], STEM
        for kind, repeats, kernel, stride, expand, cout in ARCHITECTURES[name]:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(cin, cout, kernel, s))
                else:
                    blocks.append(InvertedResidual(cin, cout, kernel, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, HEAD, 1, bias=False)
        self.bn2 = BatchNormAct(HEAD)
        self.classifier = nn.Linear(HEAD, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(x.mean((2, 3)))
