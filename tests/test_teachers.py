"""Teacher-logit cache (hit, miss, invalidation, corruption), ensembles and adjustment."""

import pytest
import torch
from torch import nn

from groupdistil.errors import UserError
from groupdistil.losses import adjust_logits
from groupdistil.teachers import LogitCache, Teacher, TeacherMember, agre_weights, cached_or_computed


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 2))


def test_cache_miss_then_hit_then_invalidated_by_weights_and_data(blobs, tmp_path):
    cache = LogitCache(tmp_path)
    m = _model(0)
    a, _, s1 = cached_or_computed(m, blobs.train, cache, 2)
    b, _, s2 = cached_or_computed(m, blobs.train, cache, 2)
    assert (s1, s2) == ("miss", "hit")
    assert torch.equal(a, b)
    assert torch.allclose(a, m(blobs.train.inputs))
    with torch.no_grad():
        m[0].bias += 1.0  # new weights: new fingerprint
    s3 = cached_or_computed(m, blobs.train, cache, 2).status
    assert s3 == "miss"
    blobs.train.inputs[0, 0] += 1.0  # new data: new fingerprint
    s4 = cached_or_computed(m, blobs.train, cache, 2).status
    assert s4 == "miss"
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_corrupt_cache_is_recomputed_not_trusted(blobs, tmp_path):
    cache = LogitCache(tmp_path)
    m = _model(0)
    good = cached_or_computed(m, blobs.train, cache, 2).logits
    good = good.clone()
    (npy,) = tmp_path.glob("*.npy")
    data = bytearray(npy.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # overwrite the last float with NaN
    npy.write_bytes(bytes(data))
    again, _, status = cached_or_computed(m, blobs.train, cache, 2)
    assert status == "miss"
    assert torch.equal(again, good)
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    assert cached_or_computed(m, blobs.train, cache, 2).status == "miss"


def test_cached_and_online_teacher_agree(blobs, tmp_path):
    m = _model(1)
    logits = cached_or_computed(m, blobs.train, LogitCache(tmp_path), 2).logits
    online = Teacher([TeacherMember(m)], blobs.class_prior())
    cached = Teacher([TeacherMember(m, cached=logits)], blobs.class_prior())
    idx = torch.tensor([5, 0, 17])
    x = blobs.train.inputs[idx]
    assert torch.allclose(online(x, idx), cached(x, idx), atol=1e-6)


def test_teacher_stays_in_eval_and_frozen(blobs):
    m = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    t = Teacher([TeacherMember(m)], blobs.class_prior())
    t.train()
    assert not m.training
    assert not any(p.requires_grad for p in m.parameters())


def test_balanced_adjustment_applied_to_members(blobs):
    m = _model(2)
    prior = torch.tensor([0.8, 0.2])
    t = Teacher([TeacherMember(m, adjust="balanced", tau=1.0)], prior)
    x = blobs.train.inputs[:3]
    assert torch.allclose(t(x, torch.arange(3)), adjust_logits(m(x), prior, 1.0), atol=1e-6)


def test_unknown_adjustment_is_an_error_not_silently_none():
    with pytest.raises(UserError, match=r"adjust: expected one of none, balanced, weighted, got 'balance'"):
        TeacherMember(_model(2), adjust="balance")
    with pytest.raises(UserError, match=r"adjust: 'weighted' needs class_weights"):
        TeacherMember(_model(2), adjust="weighted")


def test_mean_ensemble_averages_probabilities():
    m1, m2 = _model(3), _model(4)
    x = torch.randn(6, 4)
    t = Teacher([TeacherMember(m1), TeacherMember(m2)], torch.tensor([0.5, 0.5]), temperature=2.0)
    p = torch.softmax(t(x, torch.arange(6)) / 2.0, dim=1)
    expected = (torch.softmax(m1(x) / 2, 1) + torch.softmax(m2(x) / 2, 1)) / 2
    assert torch.allclose(p, expected, atol=1e-5)


def test_agre_weights_favour_the_teacher_that_disagrees_with_the_biased_model():
    p_s = torch.tensor([[0.5, 0.5]])
    p_b = torch.tensor([[0.9, 0.1]])
    p_m = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])  # teacher 0 = the biased model, teacher 1 opposite
    w = agre_weights(p_s, p_m, p_b)
    assert torch.allclose(w, torch.tensor([[0.0], [2.0]]), atol=1e-6)
    members = [TeacherMember(_model(5)), TeacherMember(_model(6))]
    t = Teacher(members, torch.tensor([0.5, 0.5]), combine="agre-kd", reference=TeacherMember(_model(5)))
    out = t(torch.randn(3, 4), torch.arange(3), torch.randn(3, 2))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
