import urllib.error

import numpy as np
import pytest
import torch

from padim.core.backbones import (
    TF_STYLE,
    available_backbones,
    get_backbone,
    offline_backbones,
)
from padim.errors import PadimError


def test_registry_lists_the_four_backbones():
    assert set(available_backbones()) >= {
        "resnet18",
        "wide_resnet50_2",
        "efficientnet_lite0",
        "efficientnet_lite2",
    }
    assert set(offline_backbones()) == {"efficientnet_lite0", "efficientnet_lite2"}
    assert get_backbone("resnet18").default_keep == 100
    assert get_backbone("wide_resnet50_2").default_keep == 550
    assert get_backbone("wide_resnet50_2").total_channels == 1792


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(PadimError, match=r"unknown backbone 'vgg'.*efficientnet_lite0"):
        get_backbone("vgg")


@pytest.mark.parametrize(
    "name", ["resnet18", "wide_resnet50_2", "efficientnet_lite0", "efficientnet_lite2"]
)
def test_taps_have_the_registered_channels_at_strides_4_8_16(name):
    spec = get_backbone(name)
    extractor = spec.build("random")
    with torch.inference_mode():
        maps = extractor(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == list(spec.channels)
    assert [m.shape[-1] for m in maps] == [16, 8, 4]
    assert not any(p.requires_grad for p in extractor.parameters())


def test_random_init_is_reproducible():
    a = get_backbone("resnet18").build("random", seed=3)
    b = get_backbone("resnet18").build("random", seed=3)
    for (_, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y)


def test_lite0_imagenet_weights_recognise_a_cat():
    """The packaged weights, mapped onto timm's layout, classify a real photo correctly."""
    import skimage.data
    from PIL import Image

    spec = get_backbone("efficientnet_lite0")
    model = spec.architecture()
    model.load_state_dict(spec.pretrained())
    model.eval()
    img = Image.fromarray(skimage.data.chelsea()).resize((224, 224))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(TF_STYLE.mean).view(1, 3, 1, 1)
    std = torch.tensor(TF_STYLE.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        top5 = model((x - mean) / std).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}, top5  # ImageNet's domestic cat classes


def test_download_failure_names_both_ways_out(monkeypatch):
    import torchvision.models as tvm

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", refuse)
    with pytest.raises(PadimError) as err:
        get_backbone("resnet18").build(None)
    msg = str(err.value)
    assert "--weights FILE" in msg and "efficientnet_lite0" in msg and "internet" in msg


def test_local_weights_file(tmp_path):
    spec = get_backbone("resnet18")
    source = spec.architecture()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    extractor = spec.build(path, fused=False)
    assert torch.equal(extractor.stages[0][0].conv1.weight, source.layer1[0].conv1.weight)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_fused_batch_norms_give_the_same_features(name):
    """Folding the batch norms into the convolutions changes nothing but float rounding, and
    leaves no batch norm behind."""
    spec = get_backbone(name)
    plain, fused = spec.build("random", seed=1, fused=False), spec.build("random", seed=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        for a, b in zip(plain(x), fused(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_weights_file_errors(tmp_path):
    spec = get_backbone("resnet18")
    with pytest.raises(PadimError, match="not found"):
        spec.build(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PadimError, match="cannot read weights"):
        spec.build(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(PadimError, match="do not fit backbone resnet18"):
        spec.build(wrong)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_efficientnet_lite_equals_timms_network(name):
    """padim's EfficientNet-Lite has timm's parameter names and order and its outputs, exactly,
    at square and odd, non-square sizes (TF "SAME" padding)."""
    timm = pytest.importorskip("timm")
    from padim.core.efficientnet_lite import EfficientNetLite

    reference = timm.create_model(name, pretrained=False).eval()
    ours = EfficientNetLite(name).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.inference_mode():
        for hw in ((64, 64), (65, 97)):
            x = torch.randn(2, 3, *hw)
            assert torch.equal(ours(x), reference(x))
            assert torch.equal(
                reference.forward_features(x),
                ours.bn2(ours.conv_head(ours.blocks(ours.bn1(ours.conv_stem(x))))),
            )
