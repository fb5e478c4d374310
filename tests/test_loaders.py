"""Samplers: seeded per epoch, group-balanced when asked."""

import pytest
import torch
from torch.utils.data import DataLoader

from groupdistil import loaders
from groupdistil.data.base import GroupedDataset
from groupdistil.loaders import (
    MIN_PASS_BATCH,
    EpochLoaders,
    HeldPasses,
    SlicedPass,
    Started,
    eval_loader,
    pass_batch_size,
    splits_loader,
    train_loader,
)
from groupdistil.models import create_model
from groupdistil.training.evaluation import evaluate


def _from_files(d):
    """The same split, its inputs read by index as a split on disk reads them (not sliceable)."""
    return GroupedDataset(d.y, d.g, loader=d.inputs.__getitem__)


def _order(ds, **kw):
    return torch.cat([idx for *_, idx in train_loader(ds, 50, **kw)])


def test_order_depends_only_on_seed_and_epoch(blobs):
    a = _order(blobs.train, seed=1, epoch=3)
    torch.rand(10)  # global RNG use in between must not matter
    assert torch.equal(a, _order(blobs.train, seed=1, epoch=3))
    assert not torch.equal(a, _order(blobs.train, seed=1, epoch=4))
    assert sorted(a.tolist()) == list(range(len(blobs.train)))


def test_group_balanced_sampler_draws_groups_equally(blobs):
    counts = blobs.group_counts()
    assert counts.max() > 4 * counts.min()  # the fixture is imbalanced
    drawn = torch.zeros(4)
    for epoch in range(20):
        idx = _order(blobs.train, seed=0, epoch=epoch, sampler="group-balanced", n_groups=4)
        drawn += torch.bincount(blobs.train.g[idx], minlength=4)
    share = drawn / drawn.sum()
    assert torch.allclose(share, torch.full((4,), 0.25), atol=0.03)


@pytest.mark.parametrize(("workers", "n_batches"), [(0, 5 + 3 + 3), (2, 6 + 4 + 4)])
def test_one_loader_of_splits_gives_each_splits_own_batches(blobs, workers, n_batches):
    parts = [blobs.train, blobs.val, blobs.test]
    got = list(splits_loader(parts, 50, num_workers=workers))
    want = [(k, b) for k, d in enumerate(parts) for b in eval_loader(d, 50, num_workers=workers)]
    # 240 and 120 samples: batches of 50 without workers; with two, 6 of 40 and 4 of 30 (an even share each)
    assert len(got) == len(want) == n_batches
    for (x, y, g, i, k), (split, (wx, wy, wg, wi)) in zip(got, want):
        assert k.tolist() == [split] * len(y)  # a batch never mixes two splits
        assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(g, wg) and torch.equal(i, wi)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_begun_early_gives_the_loaders_own_batches(blobs, workers):
    def batches(loader):
        return [torch.cat([i for *_, i in loader])]

    made = EpochLoaders(blobs.train, 50, seed=4, num_workers=workers)
    started = Started(made(0))
    torch.rand(10)  # the main process's RNG use in between changes nothing: the loader has its own
    fresh = EpochLoaders(blobs.train, 50, seed=4, num_workers=workers)
    first = batches(started)
    assert torch.equal(first[0], batches(fresh(0))[0])
    assert len(started) == len(fresh(0)) == 5
    assert torch.equal(batches(started)[0], first[0])  # a later pass is a new pass of the same epoch
    assert not torch.equal(batches(made(1))[0], first[0])  # and the next epoch moves on


@pytest.mark.parametrize(("n", "batch", "workers", "want"), [
    (250, 256, 16, 32),  # one batch of 250 would keep 15 of 16 workers idle: 8 of 32 instead (the floor)
    (250, 16, 16, 16),
    (600, 256, 16, 38),
    (4795, 256, 16, 150),  # 19 batches of 256 take two rounds of 16 workers; 32 of 150 take 300 images' time
    (200, 256, 2, 100),
    (1280, 64, 2, 64),  # 20 batches of 64: already an even share
    (1600, 64, 2, 62),  # 25 batches of 64 would give one worker a batch more: 26 of 62
    (250, 256, 0, 256),  # in-memory data (no workers) keeps the batch size
    (0, 256, 4, 256),
])
def test_a_pass_is_cut_into_an_even_share_per_worker(n, batch, workers, want):
    assert pass_batch_size(n, batch, workers) == want


def _busiest(n, size, workers):
    """The most samples one worker decodes when batches of ``size`` go to ``workers`` in turn."""
    sizes = [min(size, n - j) for j in range(0, n, size)]
    return max(sum(sizes[w::workers]) for w in range(workers))


def test_a_pass_never_waits_for_more_than_its_share_plus_a_sample_a_round():
    for workers in (1, 2, 3, 8, 16):
        for batch in (1, 7, 64, 256):
            for n in range(1, 700, 13):
                b = pass_batch_size(n, batch, workers)
                assert min(batch, MIN_PASS_BATCH) <= b <= batch
                assert _busiest(n, b, workers) <= _busiest(n, batch, workers)  # never worse than asked
                if b > min(batch, MIN_PASS_BATCH):  # not held up by the floor: an even share
                    rounds = -(-n // (workers * batch))
                    assert _busiest(n, b, workers) <= n / workers + rounds, (n, batch, workers, b)


def test_a_batch_size_moves_no_prediction():
    """Why an evaluation pass may cut its batches by its workers: a sample's logits do not depend on
    its batch beyond their last bits (on the 2-core AVX2 machine: bit for bit the same from the floor
    of 32 up; batches of 1, and MobileNet's of 7, take other CPU kernels), and its prediction not at all."""
    torch.manual_seed(0)
    x = torch.randn(96, 3, 32, 32)
    for name in ("linear", "cnn-small", "resnet20", "resnet18", "mobilenet_v3_small"):
        model = create_model(name, num_classes=10, in_channels=3, input_shape=(3, 32, 32)).eval()
        with torch.inference_mode():
            whole = model(x)
            for size in (MIN_PASS_BATCH, 7, 1):
                parts = torch.cat([model(c) for c in x.split(size)])
                assert torch.allclose(whole, parts, rtol=1e-5, atol=1e-5), (name, size)
                assert torch.equal(whole.argmax(1), parts.argmax(1)), (name, size)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_evaluation_pass_gives_the_same_metrics_with_any_workers(blobs, workers):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=blobs.n_classes, input_shape=blobs.input_shape)
    got = evaluate(model, _from_files(blobs.train), blobs.grouping, batch_size=256, num_workers=workers)
    assert len(eval_loader(_from_files(blobs.train), 256, num_workers=workers)) == (1 if workers == 0 else 2)
    want = evaluate(model, blobs.train, blobs.grouping, batch_size=240, num_workers=0)
    for key in ("n", "avg_acc", "worst_group_acc", "group_acc", "group_count", "class_acc"):
        assert got[key] == want[key], key
    assert got["ece"] == pytest.approx(want["ece"], abs=1e-9)


class _Counted:
    """A loader that counts the batches it makes."""

    def __init__(self, loader) -> None:
        self.loader, self.made = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.made += 1
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_held_pass_replays_the_first_passes_batches_without_reading_again(blobs, workers):
    source = _Counted(eval_loader(_from_files(blobs.val), 16, num_workers=workers, persistent_workers=True))
    held = HeldPasses(source, max_bytes=1 << 20)
    first = list(held)
    assert held.held and held.loader is None  # the loader (and its workers) let go
    again = list(held)
    assert source.made == len(first) == len(held) == len(again) > 1
    # Out of shared memory: a worker's tensor there keeps a file descriptor open while it lives.
    assert not any(t.is_shared() for batch in again for t in batch)
    fresh = list(eval_loader(blobs.val, 16, num_workers=workers))
    for a, b, c in zip(first, again, fresh):
        for ta, tb, tc in zip(a, b, c):
            assert torch.equal(ta, tb) and torch.equal(ta, tc)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_split_in_memory_is_passed_as_views_of_its_rows(blobs, workers):
    """No per-sample collation where the rows are the batches' inputs as they are: the loader's own
    batches (cut for ``workers`` as the loader would cut them), each a view of the split's rows."""
    sliced = eval_loader(blobs.train, 64, num_workers=workers)
    assert isinstance(sliced, SlicedPass)
    got = list(sliced)
    want = list(DataLoader(blobs.train, batch_size=pass_batch_size(len(blobs.train), 64, workers)))
    assert len(sliced) == len(got) == len(want) == 4  # 240 samples: 4 of 64, or 4 of 60 for 2 workers
    for a, b in zip(got, want):
        for ta, tb in zip(a, b):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    rows = blobs.train.inputs.untyped_storage().data_ptr()
    assert all(x.untyped_storage().data_ptr() == rows for x, *_ in got)  # nothing copied
    assert list(sliced)[1][3].tolist() == list(range(len(got[0][0]), 2 * len(got[0][0])))  # a pass again
    # Read from files, or transformed, or a rank's share: a loader
    assert isinstance(eval_loader(_from_files(blobs.train), 64), DataLoader)
    moved = GroupedDataset(blobs.train.y, blobs.train.g, inputs=blobs.train.inputs, transform=torch.neg)
    assert isinstance(eval_loader(moved, 64), DataLoader)
    with pytest.raises(ValueError, match="in memory as they are"):
        SlicedPass(moved, 64)


def test_a_split_in_memory_is_shared_out_by_a_loader_on_ranks(blobs, monkeypatch):
    monkeypatch.setattr(loaders.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(loaders.distributed, "rank", lambda: 1)
    monkeypatch.setattr(loaders.distributed, "world_size", lambda: 2)
    share = eval_loader(blobs.train, 64)
    assert isinstance(share, DataLoader)
    assert torch.cat([i for *_, i in share]).tolist() == list(range(1, len(blobs.train), 2))


def test_a_pass_over_the_budget_or_cut_short_is_read_again():
    data = [(torch.full((4, 3), float(k)), torch.tensor([k])) for k in range(5)]  # 56 bytes a batch
    over = HeldPasses(_Counted(data), max_bytes=4 * 56)
    assert [b[1].item() for b in over] == list(range(5)) and not over.held
    assert [b[1].item() for b in over] == list(range(5)) and over.loader.made == 10
    exact = HeldPasses(_Counted(data), max_bytes=5 * 56)
    list(exact)
    assert exact.held
    cut = HeldPasses(_Counted(data), max_bytes=1 << 20)
    for k, _ in enumerate(cut):
        if k == 2:
            break
    assert not cut.held  # a pass that ended early keeps nothing
    assert len(list(cut)) == 5 and cut.held


def test_a_held_pass_gives_its_inputs_as_one_tensor_and_its_batches_become_views(blobs):
    held = HeldPasses(_Counted(eval_loader(_from_files(blobs.val), 16, num_workers=0)), max_bytes=1 << 20)
    whole = held.inputs()  # the first pass is made now
    assert held.held and held.loader is None and torch.equal(whole, blobs.val.inputs)
    again = list(held)
    assert all(b[0].untyped_storage().data_ptr() == whole.untyped_storage().data_ptr() for b in again)
    assert torch.equal(torch.cat([b[0] for b in again]), whole) and len(again) == len(held) > 1
    over = HeldPasses(_Counted(eval_loader(_from_files(blobs.val), 16)), max_bytes=100)
    assert over.inputs() is None and not over.held
