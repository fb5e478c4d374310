"""--freeze backbone and --head-lr: what trains, what stays, and BatchNorm kept in eval mode."""

import torch

from groupdistil.config import OptimConfig, TrainConfig
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.groups import Grouping
from groupdistil.models import create_model
from groupdistil.objectives import build_objective
from groupdistil.training.engine import fit
from groupdistil.training.finetune import freeze_backbone, param_groups


def _images(bundle_seed: int = 0) -> DatasetBundle:
    """Two classes of 3 x 16 x 16 noise images whose mean tells the class; groups = classes x 2."""
    gen = torch.Generator().manual_seed(bundle_seed)
    grouping = Grouping.label_attribute(["a", "b"], ["u", "v"])

    def split(n: int) -> GroupedDataset:
        y = torch.randint(0, 2, (n,), generator=gen)
        attr = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 3, 16, 16, generator=gen) + y.view(-1, 1, 1, 1).float()
        return GroupedDataset(y, grouping.group_ids(y, attr), inputs=x)

    return DatasetBundle("noise", grouping, (3, 16, 16), {"train": split(48), "val": split(16), "test": split(16)})


def test_frozen_backbone_trains_the_head_only_and_keeps_batchnorm_statistics():
    bundle = _images()
    torch.manual_seed(0)
    model = create_model("resnet18", 2, input_shape=(3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = build_objective("erm", n_groups=4, n_classes=2, group_counts=bundle.group_counts().float(),
                          class_prior=bundle.class_prior())
    fit(model, obj, bundle, train=TrainConfig(epochs=2, batch_size=16, freeze="backbone", device="cpu"),
        optim=OptimConfig(lr=0.1), quiet=True, meta={"model_name": "resnet18"})
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running means, variances and step counters included
    model.train()
    assert model.training and not model.bn1.training and not model.layer4[1].bn2.training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_freeze_backbone_on_mobilenet_leaves_only_the_final_linear_layer():
    m = create_model("mobilenet_v3_small", 3, input_shape=(3, 64, 64))
    frozen = freeze_backbone(m)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.3.weight", "classifier.3.bias"]
    assert frozen == sum(p.numel() for p in m.parameters()) - 1024 * 3 - 3


def test_head_lr_gives_the_final_layer_its_own_group_and_the_schedule_scales_both():
    m = create_model("resnet18", 2, input_shape=(3, 32, 32))
    groups = param_groups(m, 0.01, 0.5)
    assert [g["lr"] for g in groups] == [0.01, 0.5]
    assert groups[1]["params"] == [m.fc.weight, m.fc.bias]
    assert len(groups[0]["params"]) + 2 == len(list(m.parameters()))
    assert len(param_groups(m, 0.01, None)) == 1
    opt = torch.optim.SGD(groups, lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.1)
    opt.step()
    sched.step()
    assert [round(g["lr"], 8) for g in opt.param_groups] == [0.001, 0.05]


def test_head_lr_in_fit_moves_the_head_faster():
    bundle = _images(1)
    obj = build_objective("erm", n_groups=4, n_classes=2, group_counts=bundle.group_counts().float(),
                          class_prior=bundle.class_prior())
    moved = {}
    for head_lr in (None, 1.0):
        torch.manual_seed(0)
        model = create_model("cnn-small", 2, input_shape=(3, 16, 16))
        w0 = model.classifier.weight.detach().clone()
        fit(model, obj, bundle, train=TrainConfig(epochs=1, batch_size=16, device="cpu"),
            optim=OptimConfig(lr=1e-4, head_lr=head_lr, schedule="constant"), quiet=True)
        moved[head_lr] = float((model.classifier.weight.detach() - w0).norm())
    assert moved[1.0] > 100 * moved[None]
