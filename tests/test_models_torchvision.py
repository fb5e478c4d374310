"""torchvision-named models: the published sizes and key/shape tables, the legacy-key mapping, and
``--pretrained`` files (.pth/.pt/.safetensors): what loads, what is refused in one line."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from groupdistil.app.runner import model_from_checkpoint, record_pretrained
from groupdistil.checkpoint import file_sha256, load_state_dict_checked, save_checkpoint
from groupdistil.cli.app import run_app
from groupdistil.config import RunConfig
from groupdistil.errors import CheckpointError
from groupdistil.models import create_model, head_of, load_weights, upgrade_legacy_keys
from groupdistil.models.resnet import BasicBlock, _stages
from groupdistil.models.simple import Classifier

TABLE = Path(__file__).parent / "tables" / "torchvision_state_dicts.txt"
#: torchvision's documented parameter counts for 1000 classes.
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
             "mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032}


def _tables() -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("## "):
            current = tables.setdefault(line[3:], [])
        elif not line.startswith("#"):
            current.append(line)
    return tables


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_count_and_full_key_shape_table(name):
    torch.manual_seed(0)
    m = create_model(name, 1000, input_shape=(3, 224, 224))
    assert sum(p.numel() for p in m.parameters()) == PUBLISHED[name]
    rows = [f"{k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in m.state_dict().items()]
    assert rows == _tables()[name]


@pytest.mark.parametrize("name,width", [("resnet18", 512), ("mobilenet_v3_small", 1024)])
def test_64px_inputs_give_logits_and_the_head_input_as_features(name, width):
    torch.manual_seed(0)
    m = create_model(name, 3, input_shape=(3, 64, 64)).eval()
    logits, f = m(torch.randn(2, 3, 64, 64), return_features=True)
    assert logits.shape == (2, 3) and f.shape == (2, width)
    assert torch.allclose(head_of(m)(f), logits, atol=1e-5)


def test_small_inputs_keep_the_names_with_a_3x3_stride_1_stem():
    small = create_model("resnet18", 2, input_shape=(3, 32, 32))
    large = create_model("resnet18", 2, input_shape=(3, 64, 64))
    assert small.conv1.weight.shape == (64, 3, 3, 3) and small.conv1.stride == (1, 1)
    assert large.conv1.weight.shape == (64, 3, 7, 7) and large.conv1.stride == (2, 2)
    assert list(small.state_dict()) == list(large.state_dict())


def _legacy_resnet18(small: bool) -> Classifier:
    """groupdistil's earlier resnet18 layout (``features.N``, blocks ``body.K``), built as it was."""
    conv = (nn.Conv2d(3, 64, 3, 1, 1, bias=False) if small else nn.Conv2d(3, 64, 7, 2, 3, bias=False))
    stem = [conv, nn.BatchNorm2d(64), nn.ReLU()] + ([] if small else [nn.MaxPool2d(3, 2, 1)])
    body, c = _stages(BasicBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    return Classifier(nn.Sequential(*stem, body, nn.AdaptiveAvgPool2d(1), nn.Flatten()), c, 5)


@pytest.mark.parametrize("side", [32, 64])
def test_legacy_resnet_checkpoints_load_by_the_key_mapping(tmp_path, side):
    torch.manual_seed(0)
    old = _legacy_resnet18(small=side < 64)
    for bn in (m for m in old.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    torch.save({"model": old.state_dict()}, tmp_path / "old.pt")
    new = create_model("resnet18", 5, input_shape=(3, side, side))
    load_weights(new, tmp_path / "old.pt")
    x = torch.randn(2, 3, side, side)
    assert torch.allclose(old.eval()(x), new.eval()(x), atol=1e-5)
    resumed = create_model("resnet18", 5, input_shape=(3, side, side))
    load_state_dict_checked(resumed, old.state_dict())  # the load every path shares (resume too)
    assert torch.allclose(old.eval()(x), resumed.eval()(x), atol=1e-5)
    other = {"features.0.weight": torch.zeros(1)}
    assert upgrade_legacy_keys("resnet8", other) is other  # CIFAR ResNets keep their own names


def _tv_file(tmp_path: Path, name: str = "resnet18", classes: int = 1000, fmt: str = "pth", wrap: str = ""):
    torch.manual_seed(1)
    state = create_model(name, classes, input_shape=(3, 64, 64)).state_dict()
    path = tmp_path / f"{name}-{classes}{wrap}.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return state, path


@pytest.mark.parametrize("fmt,wrap", [("pth", ""), ("pt", "state_dict"), ("pth", "model"), ("safetensors", "")])
def test_pretrained_loads_the_backbone_and_reinitialises_a_head_of_another_shape(tmp_path, fmt, wrap):
    state, path = _tv_file(tmp_path, fmt=fmt, wrap=wrap)
    torch.manual_seed(2)
    fresh = create_model("resnet18", 2, input_shape=(3, 64, 64)).state_dict()
    torch.manual_seed(2)
    m = create_model("resnet18", 2, input_shape=(3, 64, 64), pretrained=path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith("fc.") else state[k]), k


def test_pretrained_keeps_a_head_that_fits_and_strips_ddp_prefixes(tmp_path):
    state, _ = _tv_file(tmp_path, classes=2)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pth")
    m = create_model("resnet18", 2, input_shape=(3, 64, 64), pretrained=tmp_path / "ddp.pth")
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_pretrained_rgb_stem_is_summed_for_grey_inputs(tmp_path):
    state, path = _tv_file(tmp_path)
    m = create_model("resnet18", 2, in_channels=1, input_shape=(1, 64, 64), pretrained=path)
    assert torch.allclose(m.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_pretrained_mismatches_are_one_line_naming_keys_and_model(tmp_path):
    _, path = _tv_file(tmp_path, name="resnet34")
    with pytest.raises(CheckpointError, match=r"does not fit model 'resnet18': unexpected keys layer1\.2\.conv1"):
        create_model("resnet18", 2, input_shape=(3, 64, 64), pretrained=path)
    _, path = _tv_file(tmp_path, name="resnet18")
    with pytest.raises(CheckpointError, match=r"'resnet50': missing keys layer1\.0\.conv3\.weight"):
        create_model("resnet50", 2, input_shape=(3, 64, 64), pretrained=path)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys conv1\.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"):
        create_model("resnet18", 2, input_shape=(3, 32, 32), pretrained=path)
    for bad, why in ((b"nope", "not a readable weights file"), (None, "file not found")):
        target = tmp_path / "bad.safetensors"
        target.unlink(missing_ok=True)
        if bad is not None:
            target.write_bytes(bad)
        with pytest.raises(CheckpointError, match=why) as e:
            create_model("resnet18", 2, input_shape=(3, 64, 64), pretrained=target)
        assert "\n" not in str(e.value)
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        create_model("resnet18", 2, input_shape=(3, 64, 64), pretrained=tmp_path / "meta.pt")


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_legacy_teacher_checkpoint_loads_through_model_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    old = _legacy_resnet18(small=True)
    save_checkpoint(tmp_path / "t.pt", {"model_name": "resnet18", "num_classes": 5, "in_channels": 3,
                                        "input_shape": [3, 32, 32], "model": old.state_dict()})
    model, _ = model_from_checkpoint(tmp_path / "t.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), old.eval()(x), atol=1e-5)


def test_the_run_records_and_checks_the_pretrained_files_hash(tmp_path, capsys):
    _, path = _tv_file(tmp_path)
    cfg = RunConfig(model={"name": "resnet18", "pretrained": path})
    assert record_pretrained(cfg).model.pretrained_sha256 == file_sha256(path)
    with pytest.raises(CheckpointError, match=r"differs from the recorded model\.pretrained_sha256"):
        record_pretrained(RunConfig(model={"name": "resnet18", "pretrained": path, "pretrained_sha256": "0" * 64}))
    # Through the command line: one line naming the file and the model, exit 2, nothing written.
    out = tmp_path / "run"
    assert run_app(["train", "--dataset", "spurious-digits", "--model", "cnn-small", "--pretrained", str(path),
                    "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "does not fit model 'cnn-small'" in err
    assert not out.exists()
