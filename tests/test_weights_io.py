"""Weights I/O: float16 safetensors plus a JSON card, and a clear WeightsError for every way it can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segmentation.models import MODEL_NAMES, create_model
from segmentation.weights_io import ModelCard, WeightsError, load_model, read_card, save_weights, weights_paths


def _copy(source_dir: Path, target_dir: Path, *files: str) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(source_dir / name, target_dir / name)
    return target_dir


def test_a_statistic_float16_cannot_hold_is_refused_not_saved_as_infinity(tmp_path: Path) -> None:
    """A BatchNorm variance over 65,504 would be inf in float16 and, folded, silence its channel."""
    model = create_model("unet")
    with torch.no_grad():
        model.state_dict()["encoders.0.1.running_var"][3] = 70_000.0
    card = ModelCard(architecture="unet", inference_size=96)
    with pytest.raises(WeightsError, match=r"not representable in float16.*encoders\.0\.1\.running_var"):
        save_weights(model, card, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_save_then_load_round_trips_in_float16(tmp_path: Path) -> None:
    """The file holds float16 tensors; the loaded network computes what the original did, within fp16 error."""
    torch.manual_seed(0)
    original = create_model("deeplab")
    original.train()
    with torch.no_grad():  # non-default BatchNorm statistics, so they must round-trip too
        original(torch.randn(2, 3, 64, 64))
    original.eval()
    card = ModelCard(architecture="deeplab", inference_size=96, training_command="python -m training.train x.toml")
    tensors_path, card_path = save_weights(original, card, tmp_path)
    assert (tensors_path, card_path) == weights_paths("deeplab", tmp_path)

    with safe_open(str(tensors_path), framework="pt") as stored:
        dtypes = {key: stored.get_slice(key).get_dtype() for key in stored.keys()}  # noqa: SIM118
        assert stored.metadata()["architecture"] == "deeplab"
    assert set(dtypes) == set(original.state_dict())
    assert {dtype for key, dtype in dtypes.items() if not key.endswith("num_batches_tracked")} == {"F16"}

    loaded, loaded_card = load_model("deeplab", tmp_path)
    assert not loaded.training
    assert loaded_card == card
    assert loaded_card.parameters == sum(p.numel() for p in original.parameters())
    for key, value in loaded.state_dict().items():
        assert value.dtype == original.state_dict()[key].dtype, key  # back to float32 in memory

    inputs = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected, actual = original(inputs), loaded(inputs)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0.02, atol=0.02 * scale)
    assert not torch.equal(actual, expected)  # it really went through float16


def test_card_json_round_trips() -> None:
    card = ModelCard(
        architecture="unet",
        inference_size=224,
        training_data=[{"name": "people-ccp", "licence": "Apache-2.0"}],
        metrics={"all": {"dice": 0.9, "iou": 0.82}},
        parameters=31_037_633,
        extra_sizes=[160],
    )
    assert ModelCard.from_json(card.to_json()) == card
    older = json.loads(card.to_json())
    del older["extra_sizes"]  # cards written before the field: one size
    assert ModelCard.from_json(json.dumps(older)).extra_sizes == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_load_model_reads_each_network_from_a_weights_folder(random_weights_dir: Path, name: str) -> None:
    model, card = load_model(name, random_weights_dir)
    assert card.architecture == name
    assert card.parameters == sum(p.numel() for p in model.parameters())
    assert type(model) is type(create_model(name))


def test_missing_safetensors_file_is_named(random_weights_dir: Path, tmp_path: Path) -> None:
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.json")
    with pytest.raises(WeightsError, match=r"no weights for 'deeplab': .*deeplab\.safetensors is missing"):
        load_model("deeplab", folder)


def test_missing_card_is_named(random_weights_dir: Path, tmp_path: Path) -> None:
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.safetensors")
    with pytest.raises(WeightsError, match=r"no model card for 'deeplab': .*deeplab\.json is missing"):
        load_model("deeplab", folder)


def test_card_for_another_architecture_is_refused(random_weights_dir: Path, tmp_path: Path) -> None:
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.safetensors")
    shutil.copy(random_weights_dir / "unet.json", folder / "deeplab.json")
    with pytest.raises(WeightsError, match=r"deeplab\.json describes 'unet', expected 'deeplab'"):
        load_model("deeplab", folder)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "Expecting property name"), ('{"architecture": "deeplab"}', "mean"), ("[]", "list")],
)
def test_unreadable_card_is_refused_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "deeplab.json").write_text(text)
    with pytest.raises(WeightsError, match=r"invalid model card .*deeplab\.json") as caught:
        read_card("deeplab", tmp_path)
    assert problem in str(caught.value)


def test_tensors_of_the_other_architecture_are_refused(random_weights_dir: Path, tmp_path: Path) -> None:
    """UNet tensors saved under deeplab's name: the message names the file and counts the mismatches."""
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.json")
    shutil.copy(random_weights_dir / "unet.safetensors", folder / "deeplab.safetensors")
    with pytest.raises(WeightsError) as caught:
        load_model("deeplab", folder)
    message = str(caught.value)
    assert str(folder / "deeplab.safetensors") in message
    assert "does not fit the 'deeplab' architecture" in message
    assert "missing (e.g. aspp." in message
    assert "unexpected (e.g. bottleneck." in message


def test_a_tensor_of_the_wrong_shape_is_refused(random_weights_dir: Path, tmp_path: Path) -> None:
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.json")
    state = load_file(str(random_weights_dir / "deeplab.safetensors"))
    state["head.weight"] = torch.zeros(2, 256, 1, 1, dtype=torch.float16)
    save_file(state, str(folder / "deeplab.safetensors"))
    with pytest.raises(
        WeightsError, match=r"deeplab\.safetensors does not fit .* 1 wrong shape \(e\.g\. head\.weight\)"
    ):
        load_model("deeplab", folder)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: b"this is not a safetensors file, just some text" * 4, id="text"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_corrupt_safetensors_bytes_are_refused_naming_the_file(
    random_weights_dir: Path, tmp_path: Path, corrupt
) -> None:
    folder = _copy(random_weights_dir, tmp_path / "w", "deeplab.json")
    (folder / "deeplab.safetensors").write_bytes(corrupt((random_weights_dir / "deeplab.safetensors").read_bytes()))
    with pytest.raises(WeightsError, match=r"cannot read weights .*deeplab\.safetensors: .+"):
        load_model("deeplab", folder)


def test_unknown_model_name_is_refused_listing_the_valid_ones(random_weights_dir: Path) -> None:
    with pytest.raises(WeightsError, match="unknown model 'resnet50'; choose one of: deeplab, unet"):
        load_model("resnet50", random_weights_dir)


def test_card_records_the_parameter_count_and_is_plain_json(random_weights_dir: Path) -> None:
    values = json.loads((random_weights_dir / "unet.json").read_text())
    assert values["architecture"] == "unet"
    assert values["parameters"] == sum(p.numel() for p in create_model("unet").parameters())
    assert values["mean"] == pytest.approx([0.485, 0.456, 0.406])
