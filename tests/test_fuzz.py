"""Fuzzing what a user writes or hands over: configs, numbers, sweep grids, manifests, run files and
checkpoints.

Every generated input either loads or fails with one UserError line; any other exception (a traceback
for the user) fails the test. 300 configs, 100 YAML alias/nesting structures, 200 number assignments,
100 sweep grids, 250 manifests, 100 damaged run logs, 100 final.json numbers and 200 checkpoints with
fields of any type, derandomised so CI is stable.
"""

import csv
import io
import json
import math
import string
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import valid_checkpoint
from groupdistil.app.runner import model_from_checkpoint
from groupdistil.app.sweep import expand, parse_grid
from groupdistil.checkpoint import restore_training, save_checkpoint
from groupdistil.config import OptimConfig, leaf_fields, load_yaml, set_dotted, validate_config
from groupdistil.data import DataConfig, load_dataset
from groupdistil.errors import UserError
from groupdistil.objectives import build_objective
from groupdistil.report import load_group_weights, load_run
from groupdistil.report.aggregate import aggregate
from groupdistil.runs.outputs import RunWriter
from groupdistil.training.devices import make_scaler
from groupdistil.training.optim import make_optimizer, make_scheduler


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                    database=None)
KEYS = [k for k, _ in leaf_fields()]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.text(max_size=4), max_size=3))


def _must_be_clean(fn) -> None:
    try:
        fn()
    except UserError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)


@st.composite
def config_documents(draw) -> str:
    kind = draw(st.sampled_from(["structured", "text", "mutated"]))
    if kind == "text":
        return draw(st.text(alphabet=string.printable, max_size=200))
    raw: dict = {}
    for key in draw(st.lists(st.sampled_from([*KEYS, "train.nope", "nope", "data"]), max_size=6)):
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            node = nxt if isinstance(nxt, dict) else {}
        node[parts[-1]] = draw(scalars)
    text = yaml.safe_dump(raw)
    if kind == "mutated" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from([":", "- ", "{", "!!python/object:os.system", "\t", "'"])) + text[i:]
    return text


@fuzz(300)
@given(doc=config_documents(), overrides=st.lists(st.text(max_size=20), max_size=2))
def test_fuzz_config_loader(tmp_path_factory, doc, overrides):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(doc)

    def load():
        raw = load_yaml(path)
        for o in overrides:
            set_dotted(raw, o)
        validate_config(raw)

    _must_be_clean(load)


cells = st.one_of(st.sampled_from(["train", "val", "test", "TRAIN", "", "nan", "a", "b"]),
                  # numbers beyond int64 and float overflow, huge class ids
                  st.sampled_from(["100000000000000000000000", "1e23", "1e308", "-1e308", "1000000000", "1e9"]),
                  st.integers(-3, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.text(alphabet=string.ascii_letters + "./\\ ,\"'", max_size=6))


@st.composite
def manifests(draw) -> str:
    columns = draw(st.lists(st.sampled_from(["label", "split", "group", "x1", "x2", "path", "attr", ""]),
                            min_size=0, max_size=6))
    rows = draw(st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), max_size=8))
    if draw(st.booleans()):  # a well-formed core so readers get past the header checks
        columns = ["label", "split", "x1", *columns]
        rows = [[str(i % 2), ["train", "val", "test"][i % 3], str(i), *r] for i, r in enumerate(rows)]
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *rows])
    text = buf.getvalue()
    if draw(st.booleans()) and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(['"', ",", "\n", "\x00", "\ufeff"])) + text[i:]
    return text


@fuzz(250)
@given(text=manifests(), group_by=st.sampled_from([None, ["attr"], ["nope"]]))
def test_fuzz_manifest_reader(tmp_path_factory, text, group_by):
    path = tmp_path_factory.mktemp("man") / "m.csv"
    path.write_text(text, encoding="utf-8")
    _must_be_clean(lambda: load_dataset(DataConfig(dataset="manifest", root=path, group_by=group_by)))



def test_cli_turns_a_fuzzed_failure_into_one_line(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text('label,split\n1,train\n"2,val\n')
    env_src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run([sys.executable, "-m", "groupdistil", "data", "inspect", "--dataset", "manifest",
                        "--root", str(bad)], capture_output=True, text=True, env={"PYTHONPATH": env_src})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "m.csv" in r.stderr, r.stderr


FIELDS = list(valid_checkpoint(Path("run")))
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**30), st.floats(allow_nan=True), st.text(max_size=8),
    st.lists(st.one_of(st.integers(-2, 5), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.sampled_from(["torch", "state", "param_groups", "dro.q", "avg_acc", "weight", "x"]),
                    st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=3), st.lists(st.integers(), max_size=2),
                              st.just(torch.zeros(3)), st.just(torch.zeros(5056, dtype=torch.uint8))), max_size=3),
    st.just(torch.zeros(2, 2)), st.just(torch.zeros(5056, dtype=torch.uint8)),
)


@fuzz(200)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), junk, min_size=1, max_size=3),
       dropped=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_fuzz_checkpoint_fields(tmp_path_factory, changes, dropped):
    # evaluate and distill --teacher load the model; --resume restores every state as well.
    path = tmp_path_factory.mktemp("ck") / "c.pt"
    data = {**valid_checkpoint(path.parent), **changes}
    for key in dropped:
        data.pop(key, None)
    save_checkpoint(path, data)

    def use():
        model, _ = model_from_checkpoint(path)
        opt = make_optimizer(model.parameters(), OptimConfig())
        objective = build_objective("erm", n_groups=4, n_classes=2)
        restore_training(path, model, objective, opt, make_scheduler(opt, OptimConfig(), 10),
                 make_scaler(torch.device("cpu"), "fp16"))

    _must_be_clean(use)


@st.composite
def yaml_structures(draw) -> str:
    """Alias chains (up to 10 levels of 12 aliases: 12**10 nodes expanded) and deep nesting."""
    levels, fan, depth = draw(st.integers(1, 10)), draw(st.integers(1, 12)), draw(st.integers(1, 3000))
    lines = ["a0: &a0 [x, 1]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels)]
    nest = draw(st.sampled_from(["[", "{a: ", "- "]))
    inner = "[" * depth + "]" * depth if nest == "[" else ("{a: " * depth + "1" + "}" * depth if nest == "{a: "
                                                          else "\n".join("  " * i + "- " for i in range(depth)))
    body = draw(st.sampled_from([f"train: *a{levels - 1}", f"train: {inner}", f"objective: {{x: *a{levels - 1}}}"]))
    return "\n".join([*lines, body, ""])


@fuzz(100)
@given(doc=yaml_structures())
def test_fuzz_yaml_alias_and_nesting_bounds(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("yb") / "c.yaml"
    path.write_text(doc)
    _must_be_clean(lambda: validate_config(load_yaml(path)))


NUMERIC = [k for k, f in leaf_fields() if any(t in str(f.annotation) for t in ("int", "float"))]
numbers = st.one_of(st.integers(-(10**40), 10**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([10**30, 2**63, 2**64, -(2**63) - 1, 10**400]))


@fuzz(200)
@given(assignments=st.lists(st.tuples(st.sampled_from(NUMERIC), numbers), min_size=1, max_size=4))
def test_fuzz_numbers_are_finite_and_bounded_or_refused(assignments):
    raw: dict = {}
    for key, value in assignments:
        node = raw
        for p in key.split(".")[:-1]:
            node = node.setdefault(p, {})
        node[key.rsplit(".", 1)[-1]] = value
    try:
        cfg = validate_config(raw)
    except UserError as e:
        assert "\n" not in str(e)
        return
    flat = cfg.model_dump()
    for key in NUMERIC:
        node = flat
        for p in key.split("."):
            node = node[p]
        if isinstance(node, float):
            assert math.isfinite(node), key
        elif isinstance(node, int):
            assert -(2**63) <= node < 2**63, key


@fuzz(100)
@given(key=st.sampled_from([*KEYS, "nope"]), values=st.text(alphabet=string.printable, max_size=30),
       name=st.text(alphabet=string.ascii_letters + "{}[].!:0", max_size=12))
def test_fuzz_sweep_grid_and_placeholders(tmp_path_factory, key, values, name):
    out = tmp_path_factory.mktemp("sw")
    _must_be_clean(lambda: expand({"name": name or None, "out": str(out)}, 2, parse_grid([f"{key}={values}"])))


@fuzz(100)
@given(tail=st.binary(max_size=40), which=st.sampled_from(["metrics.jsonl", "group_weights.csv"]),
       resume_epoch=st.integers(0, 2))
def test_fuzz_damaged_run_logs(tmp_path_factory, tail, which, resume_epoch):
    folder = tmp_path_factory.mktemp("run")
    names = ["a,b", "c\nd", "e"]
    writer = RunWriter(folder, names, tensorboard=False)
    writer.start("x: 1\n", resume_epoch=None)
    for epoch in range(2):
        writer.log_weights(epoch, epoch, [0.2, 0.3, 0.5])
        writer.log_epoch(epoch, "val", {"avg_acc": 0.5})
    with open(folder / which, "ab") as f:
        f.write(tail)
    _must_be_clean(lambda: load_group_weights(folder / "group_weights.csv"))
    RunWriter(folder, names, tensorboard=False).start("x: 1\n", resume_epoch=resume_epoch)  # never raises
    weights = load_group_weights(folder / "group_weights.csv")
    assert weights.names == tuple(names) and weights.epoch.max() <= resume_epoch


@fuzz(100)
@given(count=numbers, accuracy=numbers)
def test_fuzz_final_json_numbers(tmp_path_factory, count, accuracy):
    folder = tmp_path_factory.mktemp("final")
    test = {"avg_acc": accuracy, "worst_group_acc": 0.5, "balanced_acc": 0.5, "adjusted_avg_acc": 0.5,
            "worst_class_acc": 0.5, "group_acc": {"g": 0.5}, "class_acc": {"c": 0.5}, "ece": 0.1,
            "reliability": {"confidence": [0.5], "accuracy": [0.5], "count": [count]}}
    final = {"name": "n", "method": "erm", "role": "teacher", "dataset": "d", "seed": 0, "splits": {"test": test}}
    (folder / "final.json").write_text(json.dumps(final))
    _must_be_clean(lambda: aggregate([load_run(folder)]))
