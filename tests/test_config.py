"""The config schema, its YAML loading and the flags generated from it."""

import pytest

from groupdistil.cli.flags import config_parameters, flag_names, overrides_from
from groupdistil.config import RunConfig, leaf_fields, load_yaml, set_dotted, validate_config
from groupdistil.errors import ConfigError


def test_every_config_key_has_exactly_one_flag_and_the_reverse():
    params = config_parameters()
    keys = [k for k, _ in leaf_fields()]
    assert sorted(p.name.replace("__", ".") for p in params) == sorted(keys)
    names = [n for k, f in leaf_fields() for n in flag_names(k, f)]
    assert len(names) == len(set(names)), "two config keys share a flag"


def test_overrides_nest_and_split_lists():
    o = overrides_from({"train__epochs": 3, "teacher__checkpoints": "a.pt, b.pt", "data__group_by": None})
    assert o == {"train": {"epochs": 3}, "teacher": {"checkpoints": ["a.pt", "b.pt"]}}
    cfg = validate_config(o)
    assert cfg.train.epochs == 3 and [str(p) for p in cfg.teacher.checkpoints] == ["a.pt", "b.pt"]


def test_unknown_key_and_wrong_type_are_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'"):
        validate_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"train.epochs \(--epochs\): .*integer.*'many'") as e:
        validate_config({"train": {"epochs": "many"}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"objective.alpha"):
        validate_config({"objective": {"alpha": 2}})


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_set_dotted_parses_values_as_yaml():
    raw: dict = {"train": {"epochs": 1}}
    set_dotted(raw, "train.epochs=5")
    set_dotted(raw, "objective.alpha=0.25")
    set_dotted(raw, "train.compile=true")
    assert raw == {"train": {"epochs": 5, "compile": True}, "objective": {"alpha": 0.25}}
    with pytest.raises(ConfigError, match="key=value"):
        set_dotted(raw, "train.epochs")


def test_defaults_validate():
    cfg = RunConfig()
    assert cfg.train.select_on == "worst_group_acc"
    assert cfg.objective.options() == {}
