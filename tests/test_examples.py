"""Every example config validates against the schema (so the documented keys exist)."""

from pathlib import Path

import pytest

from groupdistil.config import load_yaml, validate_config
from groupdistil.data.registry import DATASETS
from groupdistil.objectives import OBJECTIVES

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path):
    cfg = validate_config(load_yaml(path), str(path))
    assert cfg.data.dataset in DATASETS
    assert cfg.objective.method in OBJECTIVES


def test_there_is_an_example_per_dataset_family():
    names = {p.stem for p in EXAMPLES}
    assert {"spurious-digits", "scanner-digits", "digits-lt", "waterbirds", "celeba", "cifar10-lt", "mnms",
            "manifest"} <= names


@pytest.mark.parametrize("stem", ["waterbirds", "celeba", "mnms"])
def test_paper_scale_examples_fine_tune_pretrained_models_teacher_first(stem):
    root = EXAMPLES[0].parent
    teacher = validate_config(load_yaml(root / f"{stem}-teacher.yaml"))
    student = validate_config(load_yaml(root / f"{stem}.yaml"))
    assert teacher.role == "teacher" and teacher.objective.method == "group-dro"
    assert (teacher.model.name, student.model.name) == ("resnet50", "resnet18")
    assert teacher.model.pretrained is not None and student.model.pretrained is not None
    assert student.teacher.checkpoints == [teacher.out / "checkpoints" / "best.pt"]
    assert teacher.optim.momentum == 0.9 and teacher.objective.step_size == 0.01
    assert not student.data.augment  # the teacher's logits can be cached
