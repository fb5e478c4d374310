"""The model factory: every name builds, shapes, features, published sizes, weights from files."""

import pytest
import torch

from groupdistil.errors import CheckpointError, UserError
from groupdistil.models import create_model, head_of, list_models

SMALL = [n for n in list_models() if n not in ("resnet34", "resnet50", "resnet101", "resnet110")]


@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_logits_and_features(name):
    torch.manual_seed(0)
    side = 32 if name.startswith(("resnet", "mobilenet")) else 8
    m = create_model(name, num_classes=2, in_channels=3, input_shape=(3, side, side)).eval()
    x = torch.randn(2, 3, side, side)
    logits, feats = m(x, return_features=True)
    assert logits.shape == (2, 2)
    assert feats.shape == (2, head_of(m).in_features)
    assert torch.allclose(head_of(m)(feats), logits, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_no_model_writes_into_its_input(name):
    """Passes over inputs held in memory hand the models views of the held rows (loaders.SlicedPass):
    a model that wrote into its input (an in-place first activation) would change the data."""
    torch.manual_seed(0)
    side = 32 if name.startswith(("resnet", "mobilenet")) else 8
    m = create_model(name, num_classes=2, in_channels=3, input_shape=(3, side, side))
    held = torch.randn(4, 3, side, side)
    before = held.clone()
    m(held[1:3]).sum().backward()  # training mode
    m.eval()
    m(held[1:3])
    assert torch.equal(held, before)


@pytest.mark.parametrize("name,published", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6)])
def test_cifar_resnets_have_the_published_size(name, published):
    n = sum(p.numel() for p in create_model(name, num_classes=10).parameters())
    assert abs(n - published) / published < 0.05


def test_initialisation_is_deterministic_given_the_seed():
    torch.manual_seed(3)
    a = create_model("resnet8", 10).state_dict()
    torch.manual_seed(3)
    b = create_model("resnet8", 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_round_trip_raw_and_checkpoint(tmp_path):
    m = create_model("cnn-small", 3, in_channels=1, input_shape=(1, 8, 8))
    torch.save(m.state_dict(), tmp_path / "raw.pt")
    torch.save({"format": "groupdistil-checkpoint", "model": m.state_dict()}, tmp_path / "ck.pt")
    for f in ("raw.pt", "ck.pt"):
        m2 = create_model("cnn-small", 3, in_channels=1, input_shape=(1, 8, 8), weights=tmp_path / f)
        assert all(torch.equal(m.state_dict()[k], m2.state_dict()[k]) for k in m.state_dict())


def test_bad_weights_and_names_are_one_line_errors(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        create_model("linear", 2, input_shape=(4,), weights=tmp_path / "bad.pt")
    torch.save(create_model("linear", 3, input_shape=(4,)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: weights do not fit"):
        create_model("linear", 2, input_shape=(4,), weights=tmp_path / "other.pt")
    with pytest.raises(UserError, match="unknown name 'resnet9'"):
        create_model("resnet9", 2)
    with pytest.raises(UserError, match=r"needs timm|cannot build"):
        create_model("timm:resnet18", 2)
