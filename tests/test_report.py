"""The report library: loading run directories, statistics over seeds, tables, figures, HTML."""

from __future__ import annotations

import base64
import json
import re
import statistics
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from groupdistil.errors import UserError
from groupdistil.report import (
    aggregate,
    bootstrap_mean_ci,
    build_report,
    discover_runs,
    load_group_weights,
    load_run,
    pareto_optimal,
    summarise,
)
from report_runs import (
    CLASSES,
    GROUPS,
    SEEDS,
    SPURIOUS_RUNS,
    SWEEP,
    make_study,
    seeded,
    split_metrics,
    write_run,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC_COLUMNS = {"avg acc": "avg_acc", "worst-group acc": "worst_group_acc", "balanced acc": "balanced_acc",
                  "adjusted avg acc": "adjusted_avg_acc", "worst-class acc": "worst_class_acc"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report([study], out, title="Synthetic study")
    return out


def markdown_tables(text: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(dataset, section): rows as {column: cell}} for every table of the report."""
    tables: dict[tuple[str, str], list[dict[str, str]]] = {}
    dataset = section = ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            dataset, section = line[3:].removeprefix("Dataset: "), "results"
        elif line.startswith("### "):
            section = line[4:]
        elif line.startswith("|") and not lines[i - 1].startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in lines[i:end]]
            assert set(cells[1]) == {"---"}
            tables[(dataset, section)] = [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]
    return tables


def mean_std_cell(cell: str) -> tuple[float, float | None]:
    parts = cell.split(" ± ")
    return float(parts[0]), float(parts[1]) if len(parts) == 2 else None


def expected_runs() -> dict[str, list[dict]]:
    """The test metrics the fixture wrote, per run name, recomputed independently of the report code."""
    bases = {name: base for _, name, _, _, base, _ in SPURIOUS_RUNS}
    bases |= {f"class-robust-kd-beta={beta:g}": base for beta, base in SWEEP.items()}
    return {name: [split_metrics(seeded(base, s), s, True) for s in SEEDS] for name, base in bases.items()}


def test_results_table_has_a_row_per_configuration_with_hand_computed_numbers(report: Path) -> None:
    tables = markdown_tables((report / "report.md").read_text())
    rows = {row["run"]: row for row in tables[("spurious-digits", "results")]}
    expected = expected_runs()
    assert set(rows) == set(expected)
    assert len(tables[("spurious-digits", "results")]) == len(expected)
    for name, runs in expected.items():
        row = rows[name]
        assert row["seeds"] == "3"
        for column, key in METRIC_COLUMNS.items():
            values = [100 * run[key] for run in runs]
            mean, std = mean_std_cell(row[column])
            assert mean == pytest.approx(statistics.mean(values), abs=0.051), (name, column)
            assert std == pytest.approx(statistics.stdev(values), abs=0.051), (name, column)
    assert rows["erm-teacher"]["role"] == "teacher" and rows["kd"]["role"] == "student"
    assert rows["groupdistil-dro_on=both"]["method"] == "groupdistil"


def test_one_seed_row_shows_the_point_and_a_point_interval(report: Path) -> None:
    (row,) = markdown_tables((report / "report.md").read_text())[("digits-lt", "results")]
    assert row["seeds"] == "1"
    assert " ± " not in row["worst-group acc"]
    point = float(row["worst-group acc"])
    assert row["worst-group 95% CI"] == f"[{point:.1f}, {point:.1f}]"


def test_per_group_table_matches_group_accuracies(report: Path) -> None:
    tables = markdown_tables((report / "report.md").read_text())
    table = tables[("spurious-digits", "Per-group test accuracy")]
    row = next(r for r in table if r["run"] == "group-dro")
    base = next(b for _, name, _, _, b, _ in SPURIOUS_RUNS if name == "group-dro")
    for group in GROUPS:
        values = [100 * seeded(base, s)[group] for s in SEEDS]
        assert mean_std_cell(row[group])[0] == pytest.approx(statistics.mean(values), abs=0.051)


def test_bootstrap_intervals_contain_the_mean(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    rows = [row for data in summary["datasets"].values() for row in data["rows"]]
    assert len(rows) == len(expected_runs()) + 1
    for row in rows:
        low, high = row["worst_group_ci"]
        mean = row["test"]["worst_group_acc"]["mean"]
        assert min(row["test"]["worst_group_acc"]["values"]) <= low <= mean <= high
        assert high <= max(row["test"]["worst_group_acc"]["values"])
        if row["n_seeds"] > 1:
            assert low < high  # the seeds differ, so the interval is not a point


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
def test_bootstrap_interval_contains_the_mean_and_lies_within_the_data(values: list[float]) -> None:
    low, high = bootstrap_mean_ci(values, resamples=2000)
    mean = float(np.mean(values))
    assert min(values) - 1e-12 <= low <= mean + 1e-12
    assert mean - 1e-12 <= high <= max(values) + 1e-12


def test_bootstrap_is_deterministic_and_narrows_with_more_seeds() -> None:
    # Eight distinct values: the resampled means take thousands of values, so the RNG shows.
    values = [0.61, 0.67, 0.70, 0.72, 0.74, 0.77, 0.78, 0.83]
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(values)
    assert bootstrap_mean_ci(values, seed=1) != bootstrap_mean_ci(values)
    low, high = bootstrap_mean_ci(values)
    low_many, high_many = bootstrap_mean_ci(values * 10)
    assert high_many - low_many < high - low
    assert bootstrap_mean_ci([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="values"):
        bootstrap_mean_ci([])


def test_summarise_ignores_missing_values() -> None:
    s = summarise([0.5, None, 0.7])
    assert s.n == 2 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert summarise([0.4]).std is None
    assert summarise([None]).mean is None


def test_pareto_optimal_points() -> None:
    points = [(0.9, 0.5), (0.8, 0.8), (0.7, 0.7), (0.9, 0.4), (0.6, 0.9), (0.8, 0.8)]
    # (0.7, 0.7) and (0.9, 0.4) are dominated; the two equal points do not dominate each other.
    assert pareto_optimal(points) == {0, 1, 4, 5}


def test_pareto_rows_and_tradeoff_curve(study: Path) -> None:
    datasets = aggregate(load_run(p) for p in discover_runs([study]).finished)
    summary = datasets["spurious-digits"]
    assert summary.class_level  # class-robust runs on a dataset whose groups are not the classes
    assert summary.tradeoff_metrics == ("worst_group_acc", "worst_class_acc")
    front = {summary.rows[i].name for i in summary.pareto["worst_group_acc"]}
    assert front == {"erm-teacher", "groupdistil-dro_on=both"}
    (curve,) = summary.curves
    assert [summary.rows[i].beta for i in curve.rows] == [0.0, 0.5, 1.0]
    assert "class-robust-kd" in curve.label
    assert not datasets["digits-lt"].class_level and not datasets["digits-lt"].curves


def test_weight_trajectory_is_the_mean_over_seeds(study: Path) -> None:
    runs = [load_run(p) for p in discover_runs([study]).finished]
    row = next(r for r in aggregate(runs)["spurious-digits"].rows if r.name == "group-dro")
    assert row.weights is not None and row.weights.names == GROUPS and row.weights.seeds == 3
    seeds = [load_group_weights(run.path / "group_weights.csv") for run in row.runs]
    manual = np.mean([w.values for w in seeds], axis=0)
    np.testing.assert_allclose(row.weights.mean, manual)
    np.testing.assert_allclose(row.weights.mean.sum(axis=1), 1.0, atol=1e-4)
    kd = next(r for r in aggregate(runs)["spurious-digits"].rows if r.name == "kd")
    assert kd.weights is None  # header-only group_weights.csv


def test_teacher_reliability_is_pooled_over_seeds(study: Path) -> None:
    runs = [load_run(p) for p in discover_runs([study]).finished]
    teacher = next(r for r in aggregate(runs)["spurious-digits"].rows if r.role == "teacher")
    counts = np.sum([run.test["reliability"]["count"] for run in teacher.runs], axis=0)
    assert teacher.reliability is not None
    np.testing.assert_array_equal(teacher.reliability.count, counts)
    filled = counts > 0
    assert np.all(teacher.reliability.accuracy[filled] < teacher.reliability.confidence[filled])
    assert set(teacher.class_ece) == set(CLASSES)


def test_calibration_table_lists_each_class_of_the_teacher(report: Path) -> None:
    tables = markdown_tables((report / "report.md").read_text())
    table = tables[("spurious-digits", "Teacher calibration (test)")]
    assert [row["class"] for row in table] == [*CLASSES, "overall ECE"]
    waterbird = mean_std_cell(table[1]["erm-teacher (teacher)"])[0]
    assert waterbird == pytest.approx(100 * statistics.mean(0.12 + 0.02 * s for s in SEEDS), abs=0.051)


def test_report_mentions_model_selection_and_skipped_runs(report: Path) -> None:
    text = (report / "report.md").read_text()
    assert text.startswith("# Synthetic study\n")
    assert "best validation worst_group_acc" in text and "never used to choose" in text
    assert "## Unfinished runs (skipped)" in text
    assert "groupdistil-dro_on=kd" in text.split("## Unfinished runs (skipped)")[1]


def test_figures_are_non_blank_pngs(report: Path) -> None:
    expected = {f"spurious-digits_{k}.png" for k in ("group_acc", "pareto", "weights", "calibration")}
    expected |= {"digits-lt_group_acc.png", "digits-lt_pareto.png"}
    assert {p.name for p in report.glob("*.png")} == expected
    for name in expected:
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        image = imread(BytesIO(data), format="png")
        assert image.ndim == 3 and float(image[..., :3].var()) > 0, name
        assert f"]({name})" in (report / "report.md").read_text()


class _Resources(HTMLParser):
    """Collect every attribute that can load something, and the tags that would."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]


def test_html_is_self_contained_with_png_data_uris(report: Path) -> None:
    page = (report / "report.html").read_text()
    parser = _Resources()
    parser.feed(page)
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in page and "@import" not in page
    srcs = [v for tag, k, v in parser.urls if tag == "img" and k == "src"]
    assert [(t, k) for t, k, _ in parser.urls] == [("img", "src")] * len(srcs)
    assert len(srcs) == len(list(report.glob("*.png")))
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        payload = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert payload.startswith(PNG_SIGNATURE)
    assert "<title>Synthetic study</title>" in page
    assert "<td>groupdistil-dro_on=both</td>" in page


def test_report_is_deterministic(study: Path, report: Path, tmp_path: Path) -> None:
    build_report([study], tmp_path, title="Synthetic study")
    for name in ["report.md", "report.html", "summary.json", *(p.name for p in report.glob("*.png"))]:
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name


def test_discovery_finds_runs_once_and_lists_unfinished(study: Path) -> None:
    run = study / "spurious-digits" / "kd" / "seed1"
    found = discover_runs([study, run, study / "spurious-digits"])
    assert len(found.finished) == len(SPURIOUS_RUNS) * 3 + len(SWEEP) * 3 + 1
    assert found.finished.count(run) == 1
    assert found.unfinished == (study / "spurious-digits" / "groupdistil-dro_on=kd" / "seed0",)


def _one_run(tmp_path: Path, seed: int = 0, **kwargs: Any) -> Path:
    return write_run(tmp_path, role="student", name="erm", method="erm", options={}, seed=seed,
                     group_acc=seeded((0.9, 0.8, 0.7, 0.6), seed), **kwargs)


def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"run directory not found: .*nowhere"):
        discover_runs([tmp_path / "nowhere"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: json.dumps({**d, "role": "pupil"}), "role: expected one of teacher, student"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "seed"}), "seed: expected an integer"),
        (lambda d: json.dumps({**d, "splits": {"val": {}}}), "splits.test: expected an object"),
        (lambda d: json.dumps({**d, "splits": {"test": {**d["splits"]["test"], "avg_acc": 81.5}}}),
         r"splits.test.avg_acc: expected a number in \[0, 1\] or null, got 81.5"),
    ],
)
def test_malformed_final_json_names_the_file_and_key(tmp_path: Path, edit, message: str) -> None:
    run = _one_run(tmp_path)
    final = run / "final.json"
    final.write_text(edit(json.loads(final.read_text())))
    with pytest.raises(UserError, match=message) as info:
        load_run(run)
    assert str(final) in str(info.value)


def test_null_metrics_are_allowed_and_shown_as_missing(tmp_path: Path) -> None:
    run = _one_run(tmp_path)
    data = json.loads((run / "final.json").read_text())
    data["splits"]["test"]["adjusted_avg_acc"] = None
    data["splits"]["test"]["group_acc"]["waterbird_land"] = None
    (run / "final.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    build_report([tmp_path], out)
    (row,) = markdown_tables((out / "report.md").read_text())[("spurious-digits", "results")]
    assert row["adjusted avg acc"] == "n/a"


def test_malformed_group_weights_names_file_and_line(tmp_path: Path) -> None:
    run = _one_run(tmp_path, weight_names=GROUPS)
    path = run / "group_weights.csv"
    lines = path.read_text().splitlines()
    lines[3] = "2,0,0.25,abc,0.25,0.25"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"group_weights.csv: line 4: expected numbers"):
        load_run(run)
    path.write_text("step,epoch,a,b\n0,0,0.5,0.5\n1,0,1.0\n")
    with pytest.raises(UserError, match=r"group_weights.csv: line 3: expected 4 columns, got 3"):
        load_run(run)
    path.write_text("epoch,step,q0\n0,0,1\n")
    with pytest.raises(UserError, match="expected a header 'step,epoch"):
        load_run(run)
    path.write_text("step,epoch,a,b\n")  # header only: an objective without weights
    assert load_run(run).weights is None


def test_two_runs_with_the_same_seed_are_an_error(tmp_path: Path) -> None:
    _one_run(tmp_path / "a")
    _one_run(tmp_path / "b")
    with pytest.raises(UserError, match="seed 0"):
        build_report([tmp_path], tmp_path / "out")


def test_no_finished_runs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(UserError, match=r"no finished runs .*1 unfinished skipped"):
        build_report([tmp_path], tmp_path / "out")


def test_many_groups_switch_to_lines_and_drop_the_wide_table(tmp_path: Path) -> None:
    classes = [f"class{k:02d}" for k in range(40)]
    for j, method in enumerate(("erm", "kd", "group-dro", "class-robust-kd")):
        run = _one_run(tmp_path / method, dataset="cifar-lt")
        data = json.loads((run / "final.json").read_text())
        accs = {c: round(0.9 - 0.015 * k + 0.02 * j, 4) for k, c in enumerate(classes)}
        data["name"], data["method"] = method, method
        data["splits"]["test"].update(group_acc=accs, class_acc=accs, worst_group_acc=min(accs.values()))
        (run / "final.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    build_report([tmp_path], out)
    tables = markdown_tables((out / "report.md").read_text())
    assert ("cifar-lt", "Per-group test accuracy") not in tables  # 40 columns: figure only
    assert len(tables[("cifar-lt", "results")]) == 4
    image = imread(out / "cifar-lt_group_acc.png")
    assert float(image[..., :3].var()) > 0
