"""Inferred training groups: the sources, their determinism, their cache, JTT, and the bundle view."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

import groupdistil as gd
from groupdistil.models.simple import Classifier
from groupdistil.pseudogroups import (
    agreement,
    cluster_groups,
    error_groups,
    groups_from_model,
    single_group,
    write_assignment,
)
from groupdistil.teachers import LogitCache, cached_or_computed, compute_logits_and_features

NAMES = ("neg", "pos")


def _model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), 8, 2)


def test_errors_split_each_class_into_right_and_wrong():
    y = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.tensor([[2.0, 0], [0, 2.0], [0, 2.0], [2.0, 0], [0, 1.0]])
    out = error_groups(logits, y, NAMES)
    assert out.ids.tolist() == [0, 1, 2, 3, 2]
    assert out.grouping.group_names == ("neg_right", "neg_wrong", "pos_right", "pos_wrong")
    assert out.source == "teacher-errors" and "2 of 5" in out.description
    assert gd.infer_groups("teacher-errors", y, NAMES, logits=logits).ids.tolist() == out.ids.tolist()


def _planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two classes, each a big and a small cluster in feature space; returns features, y, cluster."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * 60 + [1] * 60)
    minority = torch.tensor(([0] * 45 + [1] * 15) * 2)
    centre = torch.stack([torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])])[minority]
    x = centre + 0.1 * torch.randn(120, 3, generator=gen) + torch.tensor([0, 0, 0.5]) * y[:, None]
    return x, y, minority


def test_clusters_recover_planted_subgroups_with_canonical_ids():
    x, y, minority = _planted()
    out = cluster_groups(x, y, NAMES, k=2, seed=0)
    # The largest cluster of each class gets id 0: the 45-sample majority.
    assert torch.equal(out.ids, 2 * y + minority)
    assert out.grouping.group_names == ("neg_c0", "neg_c1", "pos_c0", "pos_c1")
    assert agreement(out.ids, 2 * y + minority, 4, 4)["ari"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 7])
def test_clusters_are_deterministic_for_a_seed(seed):
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(200) % 2
    a = cluster_groups(x, y, NAMES, k=3, seed=seed)
    b = cluster_groups(x.clone(), y.clone(), NAMES, k=3, seed=seed)
    assert torch.equal(a.ids, b.ids)
    assert ((a.ids // 3) == y).all()  # clusters never cross classes
    assert len(a.grouping.group_names) == 6


def test_more_clusters_than_samples_and_bad_k():
    y = torch.tensor([0, 0, 1])
    out = cluster_groups(torch.randn(3, 2), y, NAMES, k=3)
    assert out.ids.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="k: expected a positive"):
        cluster_groups(torch.randn(3, 2), y, NAMES, k=0)


def test_infer_groups_names_what_is_missing():
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="logits: teacher-errors"):
        gd.infer_groups("teacher-errors", y, NAMES)
    with pytest.raises(ValueError, match="features: teacher-clusters"):
        gd.infer_groups("teacher-clusters", y, NAMES)
    with pytest.raises(ValueError, match="source: expected one of teacher-errors"):
        gd.infer_groups("bogus", y, NAMES)
    none = gd.infer_groups("none", y, NAMES)
    assert none.ids.tolist() == [0, 0] and none.grouping.group_names == ("all",)


def test_agreement_table_and_adjusted_rand_index():
    pseudo = torch.tensor([0, 0, 1, 1, 2, 2])
    true = torch.tensor([0, 0, 1, 1, 1, 1])
    out = agreement(pseudo, true, 3, 2)
    assert out["contingency"] == [[2, 0], [0, 2], [0, 2]]
    assert 0 < out["ari"] < 1
    assert agreement(true, true, 2, 2)["ari"] == pytest.approx(1.0)


def test_assignment_csv_has_one_row_per_sample(tmp_path):
    y = torch.tensor([0, 1, 1])
    inferred = single_group(y, NAMES)
    write_assignment(tmp_path / "g.csv", inferred, y)
    rows = list(csv.reader((tmp_path / "g.csv").read_text().splitlines()))
    assert rows == [["sample", "class", "pseudo_group"], ["0", "neg", "all"], ["1", "pos", "all"],
                    ["2", "pos", "all"]]


def test_features_are_the_classifier_input():
    m = _model()
    x = torch.randn(10, 4)
    from groupdistil.data.base import GroupedDataset

    ds = GroupedDataset(torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long), inputs=x)
    logits, feats = compute_logits_and_features(m, ds, batch_size=4)
    want_logits, want_feats = m(x, return_features=True)
    torch.testing.assert_close(feats, want_feats.detach())
    torch.testing.assert_close(logits, want_logits.detach())


@pytest.mark.parametrize("source", ["teacher-errors", "teacher-clusters"])
def test_groups_are_cached_under_the_fingerprint_rules(blobs, tmp_path, source):
    cache = LogitCache(tmp_path)
    m = _model()
    a, s1 = groups_from_model(m, blobs.train, source, NAMES, cache=cache, seed=0)
    b, s2 = groups_from_model(m, blobs.train, source, NAMES, cache=cache, seed=0)
    assert (s1, s2) == ("miss", "hit")
    assert torch.equal(a.ids, b.ids) and a.description == b.description
    uncached, s3 = groups_from_model(m, blobs.train, source, NAMES, cache=None, seed=0)
    assert s3 == "off" and torch.equal(uncached.ids, a.ids)
    # The logits share the key a distilled student reads: no second pass over the data.
    assert cached_or_computed(m, blobs.train, cache, 2).status == "hit"
    if source == "teacher-clusters":  # k and the seed are part of the key
        assert groups_from_model(m, blobs.train, source, NAMES, cache=cache, clusters=3)[1] == "miss"
        assert groups_from_model(m, blobs.train, source, NAMES, cache=cache, seed=1)[1] == "miss"
    with torch.no_grad():
        m.classifier.bias += 1.0  # new weights: new fingerprint
    assert groups_from_model(m, blobs.train, source, NAMES, cache=cache)[1] == "miss"
    blobs.train.inputs[0, 0] += 1.0  # new data: new fingerprint
    assert groups_from_model(m, blobs.train, source, NAMES, cache=cache)[1] == "miss"


def test_corrupt_cached_groups_are_recomputed(blobs, tmp_path):
    cache = LogitCache(tmp_path)
    m = _model()
    good, _ = groups_from_model(m, blobs.train, "teacher-errors", NAMES, cache=cache)
    (meta,) = [p for p in tmp_path.glob("*.json") if np.load(p.with_suffix(".npy")).dtype == np.int64]
    npy = meta.with_suffix(".npy")
    data = bytearray(npy.read_bytes())
    data[-8:] = (7).to_bytes(8, "little")  # a group id that no longer matches the checksum
    npy.write_bytes(bytes(data))
    again, status = groups_from_model(m, blobs.train, "teacher-errors", NAMES, cache=cache)
    assert status == "miss" and torch.equal(again.ids, good.ids)


def test_bundle_trains_on_inferred_groups_and_evaluates_on_its_own(blobs):
    ids = torch.arange(len(blobs.train)) % 2 + 2 * blobs.train.y
    inferred = error_groups(torch.zeros(len(ids), 2), blobs.train.y, NAMES)._replace(ids=ids)
    fit = blobs.with_train_groups(inferred.grouping, inferred.ids)
    assert torch.equal(fit.fit_train.g, ids) and fit.fit_grouping is inferred.grouping
    assert torch.equal(fit.train.g, blobs.train.g) and fit.grouping == blobs.grouping  # evaluation
    assert fit.fit_group_counts().tolist() == torch.bincount(ids, minlength=4).tolist()
    assert fit.fit_train[3][2] == int(ids[3]) and torch.equal(fit.fit_train[3][0], blobs.train[3][0])
    assert blobs.fit_train is blobs.train and blobs.fit_grouping is blobs.grouping


def test_jtt_upweights_the_error_set():
    obj = gd.build_objective("jtt", n_groups=4, upweight=5.0)
    logits = torch.randn(6, 2, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    g = torch.tensor([0, 1, 2, 3, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.tensor([1.0, 5, 1, 5, 5, 1])
    out = obj(logits, y, g)
    torch.testing.assert_close(out.loss, (w * ce).sum() / w.sum())
    assert not obj.requires_teacher and out.weights is None
    with pytest.raises(ValueError, match="n_groups: expected teacher-errors groups"):
        gd.JTT(n_groups=3)
    with pytest.raises(ValueError, match="upweight: expected a weight >= 1"):
        gd.JTT(n_groups=4, upweight=0.5)
    # upweight 1 is ERM.
    erm = gd.build_objective("erm")(logits, y).loss
    torch.testing.assert_close(gd.JTT(n_groups=4, upweight=1.0)(logits, y, g).loss, erm)
