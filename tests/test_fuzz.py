"""Fuzzing the two text inputs a user writes by hand: configs and manifests.

Every generated input either loads or fails with one UserError line; any other exception (a traceback
for the user) fails the test. 300 configs + 250 manifests, derandomised so CI is stable.
"""

import csv
import io
import string
import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groupdistil.config import leaf_fields, load_yaml, set_dotted, validate_config
from groupdistil.data import DataConfig, load_dataset
from groupdistil.errors import UserError


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
