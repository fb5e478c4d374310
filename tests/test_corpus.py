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


def _tree(root: Path) -> dict[Path, bytes | None]:
    """Every path under root with its content (None for a folder)."""
    return {p.relative_to(root): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_input(case, tmp_path, capsys):
    for rel, text in case["files"].items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("ROOT", str(tmp_path)))
    for rel, text in case.get("binary", {}).items():  # bytes that are not UTF-8, written as latin-1 text
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("latin-1"))
    before = _tree(tmp_path)
    argv = [a.replace("ROOT", str(tmp_path)) for a in case["argv"]]
    assert run_app(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: ")
    assert re.search(case["expect"], err), f"{err!r} does not match {case['expect']!r}"
    assert _tree(tmp_path) == before, "nothing is written, nothing is changed"
    assert not (tmp_path / "pwned").exists()
