import math

import torch

from groupdistil.groups import Grouping
from groupdistil.metrics import N_BINS, GroupMetrics, is_better


def _logits_for(pred: list[int], n_classes: int, conf: float = 0.9) -> torch.Tensor:
    # Logits whose softmax puts `conf` on the predicted class.
    other = (1 - conf) / (n_classes - 1)
    p = torch.full((len(pred), n_classes), other)
    p[torch.arange(len(pred)), torch.tensor(pred)] = conf
    return p.log()


def test_group_and_class_accuracies_by_hand():
    grouping = Grouping.label_attribute(["c0", "c1"], ["a0", "a1"])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    a = torch.tensor([0, 0, 1, 1, 1, 0])
    g = grouping.group_ids(y, a)  # [0, 0, 1, 3, 3, 2]
    pred = [0, 1, 0, 1, 1, 0]  # correct: T F T T T F
    m = GroupMetrics(4, 2)
    m.update(_logits_for(pred, 2), y, g)
    s = m.summary(grouping, train_group_counts=torch.tensor([10, 0, 10, 20]))
    assert s["avg_acc"] == 4 / 6
    assert s["group_acc"] == {"c0_a0": 0.5, "c0_a1": 1.0, "c1_a0": 0.0, "c1_a1": 1.0}
    assert s["worst_group_acc"] == 0.0
    assert s["balanced_acc"] == (0.5 + 1 + 0 + 1) / 4
    assert s["class_acc"] == {"c0": 2 / 3, "c1": 2 / 3}
    assert s["worst_class_acc"] == 2 / 3
    # Waterbirds convention: train shares weight the test group accuracies (group 1 has no train data).
    assert math.isclose(s["adjusted_avg_acc"], (10 * 0.5 + 0 + 10 * 0.0 + 20 * 1.0) / 40)
    assert s["group_count"] == {"c0_a0": 2, "c0_a1": 1, "c1_a0": 1, "c1_a1": 2}


def test_absent_group_is_none_and_ignored():
    grouping = Grouping.classes(["a", "b", "c"])
    y = torch.tensor([0, 1, 1])
    m = GroupMetrics(3, 3)
    m.update(_logits_for([0, 1, 0], 3), y, y)
    s = m.summary(grouping)
    assert s["group_acc"]["c"] is None
    assert s["worst_group_acc"] == 0.5
    assert s["balanced_acc"] == 0.75


def test_ece_of_a_calibrated_and_an_overconfident_model():
    grouping = Grouping.classes(["a", "b"])
    y = torch.tensor([0] * 10)
    # Confidence 0.9 and 9 of 10 correct: calibrated, ECE 0.
    pred = [0] * 9 + [1]
    m = GroupMetrics(2, 2)
    m.update(_logits_for(pred, 2, 0.9), y, y)
    assert abs(m.summary(grouping)["ece"]) < 1e-6
    # Confidence 0.9 but only half right: ECE 0.4.
    m2 = GroupMetrics(2, 2)
    m2.update(_logits_for([0] * 5 + [1] * 5, 2, 0.9), y, y)
    s = m2.summary(grouping)
    assert abs(s["ece"] - 0.4) < 1e-6
    assert abs(s["group_ece"]["a"] - 0.4) < 1e-6
    assert sum(s["reliability"]["count"]) == 10 and len(s["reliability"]["count"]) == N_BINS


def test_two_classes_do_not_break_anything():
    grouping = Grouping.classes(["a", "b"])
    m = GroupMetrics(2, 2)
    m.update(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]), torch.tensor([0, 1, 0, 1, 0]))
    assert 0.0 <= m.summary(grouping)["avg_acc"] <= 1.0


def test_selection_prefers_worst_group_then_average():
    a = {"worst_group_acc": 0.5, "avg_acc": 0.9}
    b = {"worst_group_acc": 0.6, "avg_acc": 0.7}
    c = {"worst_group_acc": 0.6, "avg_acc": 0.8}
    assert is_better(a, None)
    assert is_better(b, a) and not is_better(a, b)
    assert is_better(c, b) and not is_better(b, c)
    assert is_better(a, b, metric="avg_acc")
