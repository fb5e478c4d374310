"""DataConfig: every dataset option, shared by the config file and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: The largest --image-size: a 4096 x 4096 RGB float image is 200 MB, a batch of them many GB.
MAX_IMAGE_SIZE = 4096

#: Data options that only training reads (the data commands do not offer them).
TRAINING_ONLY = ("data.train_groups", "data.group_reference", "data.clusters", "data.val_groups")


class DataConfig(BaseModel):
    """Which dataset to read and how. Options a dataset does not use are ignored by it."""

    # No inf or NaN for any float option; integers bounded so that they fit the seeds and sizes they set.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = Field("spurious-digits", description="dataset name (see `groupdistil datasets`)")
    root: Path | None = Field(None, description="local copy of the data (manifest: the manifest file)")
    data_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the built-in benchmarks and of derived splits")
    group_by: list[str] | None = Field(None, description="manifest: attribute columns forming groups")
    group_with_label: bool = Field(True, description="manifest `data.group_by`: combine with the label")
    features: list[str] | None = Field(None, description="manifest: numeric feature columns")
    target_attr: str = Field("Blond_Hair", description="celeba: target attribute")
    confounder_attr: str = Field("Male", description="celeba: confounder attribute")
    imbalance_ratio: float | None = Field(
        None, gt=1.0, description="long-tailed training split: class k keeps floor(n_max * R^(-k/(C-1))) "
        "of its images, n_max / n_min = R (any dataset; cifar*-lt: default 100)")
    task: Literal["pathology", "phase"] | None = Field(None, description="mnms: pathology or phase")
    group_attr: Literal["vendor", "centre"] = Field("vendor", description="mnms: groups")
    slices: Literal["central", "all"] = Field("central", description="mnms: which short-axis slices")
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE,
                                   description="image datasets: side length after resize")
    augment: bool = Field(False, description="random crop and flip on the training split")
    allow_outside_root: bool = Field(
        False, description="manifest, imagefolder: allow paths (or symbolic links) that lead outside the data folder")
    train_groups: Literal["labels", "teacher-errors", "teacher-clusters", "none"] = Field(
        "labels", description="training groups: the data's labels, or inferred from the teacher "
        "(or --group-reference): its errors or k-means clusters within each class; none: one group")
    group_reference: Path | None = Field(None, description="model whose errors or features define the "
                                         "inferred groups (an ERM model, JTT's identification model); "
                                         "default: the teacher")
    clusters: int = Field(2, ge=1, le=1000, description="teacher-clusters: k clusters within each class")
    val_groups: Literal["labels", "none"] = Field(
        "labels", description="validation groups for model selection; none: select on worst-class accuracy")
