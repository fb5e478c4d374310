"""tests/corpus/cases.yaml: every malformed input gives its one-line message and exit code 2."""

import re
from pathlib import Path

import pytest
import yaml

from groupdistil.cli.app import run_app

CASES = yaml.safe_load((Path(__file__).parent / "corpus" / "cases.yaml").read_text())


def test_the_corpus_is_large_and_covers_every_reader():
    assert len(CASES) >= 30
    names = {c["name"].split("-")[0] for c in CASES}
    assert {"config", "waterbirds", "celeba", "manifest", "cifar10", "cifar100", "mnms"} <= names
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_input(case, tmp_path, capsys):
    for rel, text in case["files"].items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("ROOT", str(tmp_path)))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.replace("ROOT", str(tmp_path)) for a in case["argv"]]
    assert run_app(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: ")
    assert re.search(case["expect"], err), f"{err!r} does not match {case['expect']!r}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing is written"
    assert not (tmp_path / "pwned").exists()
