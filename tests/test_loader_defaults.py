"""Loading defaults for image data: workers by default for image files only, workers that persist
across epochs while every epoch keeps its own order, and inputs decoded once and held in memory."""

import os

import pytest
import torch

from conftest import write_image
from groupdistil.data import DataConfig, load_dataset
from groupdistil.data.base import GroupedDataset
from groupdistil.data.images import ArrayImages
from groupdistil.loaders import EpochLoaders, SlicedPass, default_workers, eval_loader, held_pass, holder, train_loader
from groupdistil.parallel import distributed
from groupdistil.teachers import compute_logits


def test_default_workers_are_the_cores_for_image_files_and_none_for_tensors(blobs, waterbirds_root, monkeypatch):
    images = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers(blobs.train) == 0
    in_memory = GroupedDataset(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                               loader=ArrayImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)))
    assert default_workers(in_memory) == 0  # CIFAR's uint8 arrays: in memory too
    assert default_workers(images) == cores
    assert default_workers(images, requested=0) == 0 and default_workers(blobs.train, requested=3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: one worker each
    assert default_workers(images) == 1


def test_persistent_workers_serve_every_epoch_in_that_epochs_order(waterbirds_root):
    _more_images(waterbirds_root)
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    loaders = EpochLoaders(train, 8, seed=3, num_workers=1)
    first = loaders(0)
    assert first.persistent_workers
    for epoch in (0, 1, 2):
        loader = loaders(epoch)
        assert loader is first  # the same workers
        got = torch.cat([idx for *_, idx in loader])
        want = torch.cat([idx for *_, idx in train_loader(train, 8, seed=3, epoch=epoch)])
        assert torch.equal(got, want)


def test_augmented_training_gets_fresh_workers_each_epoch(waterbirds_root):
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8, augment=True)).train
    loaders = EpochLoaders(train, 4, seed=0, num_workers=1)
    a, b = loaders(0), loaders(1)
    assert a is not b and not a.persistent_workers


def _more_images(root) -> None:
    for i in range(12, 40):  # more training images, so that orders of different epochs differ
        write_image(root / f"extra/{i}.jpg", value=5 * i)
    with open(root / "metadata.csv", "a") as f:
        f.writelines(f"{i + 1},extra/{i}.jpg,{i % 2},0,{i // 2 % 2},p/{i}.jpg\n" for i in range(12, 40))


def _same_batches(got, want) -> None:
    got, want = list(got), list(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b))


@pytest.mark.parametrize("workers", [0, 1])
def test_held_inputs_serve_the_epochs_after_the_first_from_memory(waterbirds_root, workers):
    _more_images(waterbirds_root)
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    loaders = EpochLoaders(train, 8, seed=3, num_workers=workers, hold_bytes=1 << 20, sampler="group-balanced",
                           n_groups=4)
    first = loaders(0)
    for k, _ in enumerate(first):  # an epoch cut short holds only what it decoded
        if k == 1:
            break
    assert loaders.held is not None and not loaders.held.whole
    epoch = 0
    while not loaders.held.whole:  # group-balanced draws with replacement: an epoch may miss samples
        assert epoch < 20
        _same_batches(loaders(epoch), train_loader(train, 8, seed=3, epoch=epoch, sampler="group-balanced",
                                                   n_groups=4))
        epoch += 1
    for later in (epoch, epoch + 1):
        skip = later - epoch  # a run resumed within the epoch
        loader = loaders(later, skip=skip)
        assert loader.dataset.inputs is not None and loader.num_workers == 0 and loaders.kept is None
        _same_batches(loader, train_loader(train, 8, seed=3, epoch=later, sampler="group-balanced", n_groups=4,
                                           skip=skip))


def test_a_pass_over_held_inputs_begins_at_iter(waterbirds_root):
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    loader = EpochLoaders(train, 4, seed=0, num_workers=0, hold_bytes=1 << 20)(0)
    begun, files = [], loader.loader

    class Counted:
        def __iter__(self):
            begun.append(True)
            return iter(files)

        def __len__(self) -> int:
            return len(files)

    loader.loader = Counted()
    batches = iter(loader)
    assert begun == [True]  # begun at iter(), as loaders.Started needs (the workers start then)
    assert len(list(batches)) == len(loader) > 1 and loader.held.whole


def test_inputs_are_not_held_with_augmentation_in_memory_over_the_budget_or_on_ranks(
    blobs, waterbirds_root, monkeypatch
):
    config = DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)
    augmented = load_dataset(config.model_copy(update={"augment": True})).train
    assert EpochLoaders(augmented, 4, seed=0, num_workers=0, hold_bytes=1 << 20).held is None
    assert EpochLoaders(blobs.train, 4, seed=0, num_workers=0, hold_bytes=1 << 20).held is None
    train = load_dataset(config).train
    assert EpochLoaders(train, 4, seed=0, num_workers=0).held is None  # not asked
    over = EpochLoaders(train, 4, seed=0, num_workers=0, hold_bytes=len(train) * 3 * 8 * 8 * 4 - 1)
    list(over(0))
    assert over.held.refused and not over.held.whole and over(1).dataset is train
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    assert EpochLoaders(train, 4, seed=0, num_workers=0, hold_bytes=1 << 20).held is None


def test_a_pass_before_training_fills_the_holder_the_epochs_read(waterbirds_root):
    """A sequential pass (a teacher's) keeps the inputs it decodes; once all are kept, passes read them
    as views, in the loader's batches, and the epochs read them without decoding."""
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    files = eval_loader(train, 16)
    assert held_pass(files, None, 16) is files
    over = holder(train, len(train) * 3 * 8 * 8 * 4 - 1)
    list(held_pass(files, over, 16))
    assert over.refused and held_pass(files, over, 16) is files  # over the budget: the files, every pass
    held = holder(train, 1 << 20)
    first = list(held_pass(files, held, 16))
    assert held.whole
    again = held_pass(files, held, 16)
    assert isinstance(again, SlicedPass) and len(again) == len(files)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b))
    loaders = EpochLoaders(train, 4, seed=0, num_workers=0, held=held)
    assert loaders.held is held and loaders(0).dataset.inputs is held.inputs  # epoch 0 decodes nothing
    with pytest.raises(ValueError, match=f"holds {len(train)} samples, the dataset has 5"):  # a holder of another split
        compute_logits(torch.nn.Flatten(), torch.utils.data.Subset(train, range(5)), held=held)
