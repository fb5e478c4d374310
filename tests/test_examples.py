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
