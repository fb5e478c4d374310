"""Loading defaults for image data: workers by default for image files only, and workers that persist
across epochs while every epoch keeps its own order."""

import os

import torch

from conftest import write_image
from groupdistil.data import DataConfig, load_dataset
from groupdistil.data.base import GroupedDataset
from groupdistil.data.images import ArrayImages
from groupdistil.loaders import default_workers, epoch_loaders, train_loader


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
    for i in range(12, 40):  # more training images, so that orders of different epochs differ
        write_image(waterbirds_root / f"extra/{i}.jpg", value=5 * i)
    with open(waterbirds_root / "metadata.csv", "a") as f:
        f.writelines(f"{i + 1},extra/{i}.jpg,{i % 2},0,{i // 2 % 2},p/{i}.jpg\n" for i in range(12, 40))
    train = load_dataset(DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=8)).train
    loaders = epoch_loaders(train, 8, seed=3, num_workers=1)
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
    loaders = epoch_loaders(train, 4, seed=0, num_workers=1)
    a, b = loaders(0), loaders(1)
    assert a is not b and not a.persistent_workers
