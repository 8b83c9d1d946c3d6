"""The two networks: shapes, gradients, sizes, the registry and local backbone weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from segmentation.models import MODEL_NAMES, DeepLabV3ResNet18, UNet, create_model, fold_batch_norms


@pytest.fixture(scope="module")
def networks() -> dict[str, nn.Module]:
    """One instance of each network, shared by the tests of this module (they only zero its gradients)."""
    torch.manual_seed(0)
    return {name: create_model(name) for name in MODEL_NAMES}


def test_registry_names_both_networks() -> None:
    assert set(MODEL_NAMES) == {"deeplab", "unet"}
    assert isinstance(create_model("deeplab"), DeepLabV3ResNet18)
    assert isinstance(create_model("unet"), UNet)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 33, 20)])
def test_forward_and_backward_give_one_logit_channel_at_input_size(
    networks: dict[str, nn.Module], name: str, shape: tuple[int, int, int, int]
) -> None:
    """Training mode on tiny and odd sizes: output N x 1 x H x W, and every parameter gets a finite gradient."""
    model = networks[name].train()
    model.zero_grad(set_to_none=True)
    inputs = torch.randn(*shape)
    logits = model(inputs)
    assert logits.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(logits).all()
    nn.functional.binary_cross_entropy_with_logits(logits, torch.rand_like(logits).round()).backward()
    without = [key for key, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without, f"parameters without a finite gradient: {without[:5]}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_output_does_not_depend_on_the_batch(networks: dict[str, nn.Module], name: str) -> None:
    """In eval mode an image's logits are the same alone or in a batch (no batch statistics leak in)."""
    model = networks[name].eval()
    batch = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        together = model(batch)
        alone = model(batch[1:])
    torch.testing.assert_close(together[1:], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "low", "high"), [("unet", 30.9e6, 31.1e6), ("deeplab", 16.5e6, 16.7e6)])
def test_parameter_count_matches_the_research_architecture(
    networks: dict[str, nn.Module], name: str, low: float, high: float
) -> None:
    count = sum(p.numel() for p in networks[name].parameters())
    assert low <= count <= high, f"{name} has {count / 1e6:.2f} M parameters"


def test_unknown_model_name_fails_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet50'") as caught:
        create_model("resnet50")
    for name in MODEL_NAMES:
        assert name in str(caught.value)


def test_deeplab_aspp_pooling_branch_has_no_batchnorm() -> None:
    """A BatchNorm on the 1x1 pooled map would refuse to train at batch size 1."""
    pooling = DeepLabV3ResNet18().aspp.branches[-1]
    assert isinstance(pooling[0], nn.AdaptiveAvgPool2d)
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in pooling.modules())


def test_deeplab_trains_at_batch_size_one() -> None:
    """A few optimiser steps on one 64x64 image run and lower the loss on that image."""
    torch.manual_seed(1)
    model = create_model("deeplab").train()
    image = torch.randn(1, 3, 64, 64)
    target = torch.zeros(1, 1, 64, 64)
    target[..., 16:48, 20:44] = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(image), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_backbone_weights_load_into_the_resnet18_encoder(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    model = create_model("deeplab", backbone_weights=path)
    encoder = model.encoder
    pairs = {
        "conv1.weight": encoder.stem[0].weight,
        "bn1.running_mean": encoder.stem[1].running_mean,
        "layer1.0.conv1.weight": encoder.layer1[0].conv1.weight,
        "layer4.1.conv2.weight": encoder.layer4[1].conv2.weight,
        "layer4.1.bn2.bias": encoder.layer4[1].bn2.bias,
    }
    for key, tensor in pairs.items():
        torch.testing.assert_close(tensor.detach(), state[key], rtol=0, atol=0, msg=key)
    # Without the file the encoder is freshly initialised, so the comparison above is not vacuous.
    fresh = create_model("deeplab")
    assert not torch.equal(fresh.encoder.stem[0].weight, state["conv1.weight"])


def test_backbone_weights_of_another_network_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "not_resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(RuntimeError, match=r"conv1\.weight"):
        create_model("deeplab", backbone_weights=path)


def test_unet_refuses_backbone_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deeplab"):
        create_model("unet", backbone_weights=tmp_path / "resnet18.pth")


def test_deeplab_encoder_runs_at_output_stride_16_with_the_shapes_of_stride_32() -> None:
    """Dilation changes strides and paddings only: weights trained at stride 32 load into stride 16."""
    dilated, plain = create_model("deeplab"), create_model("deeplab", output_stride=32)
    assert {k: v.shape for k, v in dilated.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    dilated.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        _, deep16 = dilated.eval().encoder(image)
        _, deep32 = plain.eval().encoder(image)
    assert deep16.shape[-2:] == (4, 6) and deep32.shape[-2:] == (2, 3)
    layer4 = dilated.encoder.layer4
    assert layer4[0].conv1.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    assert layer4[1].conv2.dilation == (2, 2) and layer4[1].conv2.padding == (2, 2)


@pytest.mark.parametrize("size", [(33, 47), (61, 29)])
def test_deeplab_at_output_stride_16_keeps_odd_input_sizes(size: tuple[int, int]) -> None:
    model = create_model("deeplab").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1, *size)


def test_output_stride_is_checked() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        create_model("deeplab", output_stride=8)
    with pytest.raises(ValueError, match="deeplab"):
        create_model("unet", output_stride=32)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folding_batch_norms_keeps_the_outputs_and_leaves_no_norm(name: str) -> None:
    """Every BatchNorm (with non-trivial statistics) folds into its conv; logits match at odd sizes."""
    torch.manual_seed(1)
    model = create_model(name)
    for norm in (module for module in model.modules() if isinstance(module, nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    inputs = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        expected = model(inputs)
        folded = fold_batch_norms(copy.deepcopy(model))
        actual = folded(inputs)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in model.modules()) > 10  # the original is untouched
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(create_model(name).train())
