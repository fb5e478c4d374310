"""The imagefolder reader (ROOT/<split>/<class>/<file>) and long-tailed views of any training split."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_csv, write_image
from groupdistil.cli.app import run_app
from groupdistil.data import DataConfig, load_dataset
from groupdistil.data._splits import long_tail_counts
from groupdistil.data.imagefolder import VAL_FRACTION
from groupdistil.errors import DataError

#: Training images per class of the fixture; classes deliberately not in sorted order on disk.
TRAIN = {"dog": 20, "cat": 10, "bird": 30}


def make_folder(root: Path, train: dict[str, int] = TRAIN, val: bool = True, n_eval: int = 2) -> Path:
    """Tiny PNG and JPEG images per class; each class colour differs so a model can learn them."""
    for k, (name, n) in enumerate(train.items()):
        splits = {"train": n, "test": n_eval} | ({"val": n_eval} if val else {})
        for split, count in splits.items():
            for i in range(count):
                suffix = ".jpg" if i % 2 else ".png"
                write_image(root / split / name / f"{i:03d}{suffix}", value=40 + 80 * k, size=(9, 7))
    return root


def build(root: Path, **kw) -> object:
    return load_dataset(DataConfig(dataset="imagefolder", root=root, image_size=8, **kw))


def test_classes_sorted_and_counts_with_val(tmp_path):
    b = build(make_folder(tmp_path / "d"))
    assert b.grouping.class_names == ("bird", "cat", "dog")  # sorted by name, as torchvision does
    assert b.grouping.kind == "class"
    assert b.class_counts("train").tolist() == [30, 10, 20]
    assert b.class_counts("val").tolist() == [2, 2, 2] and b.class_counts("test").tolist() == [2, 2, 2]
    x, y, g, _ = b.train[0]
    assert x.shape == (3, 8, 8) and b.input_shape == (3, 8, 8) and y == g == 0
    assert b.train.loader.name(0).endswith(os.path.join("train", "bird", "000.png"))


def test_val_is_a_stratified_seeded_cut_of_train_when_absent(tmp_path):
    root = make_folder(tmp_path / "d", val=False)
    a, b, c = build(root, data_seed=1), build(root, data_seed=1), build(root, data_seed=2)
    n = np.array([30, 10, 20])
    val = np.round(n * VAL_FRACTION).astype(int)
    assert a.class_counts("val").tolist() == val.tolist() and a.class_counts("train").tolist() == (n - val).tolist()
    names = [a.val.loader.name(i) for i in range(len(a.val))]
    assert names == [b.val.loader.name(i) for i in range(len(b.val))]  # same seed, same cut
    assert names != [c.val.loader.name(i) for i in range(len(c.val))]  # another seed, another cut
    assert all(os.sep + "train" + os.sep in p for p in names)
    assert not set(names) & {a.train.loader.name(i) for i in range(len(a.train))}


def test_hidden_files_and_folders_are_skipped(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    write_image(root / "train" / "cat" / ".ipynb_checkpoints" / "x.png")
    write_image(root / "train" / ".hidden_class" / "x.png")
    write_image(root / "train" / "cat" / "nested" / "deep.png")  # files at any depth count
    b = build(root)
    assert b.grouping.class_names == ("bird", "cat", "dog")
    assert b.class_counts("train").tolist() == [30, 11, 20]


@pytest.mark.parametrize("case", ["empty_class", "only_in_test", "not_an_image", "no_test", "group_by_no_csv"])
def test_bad_layouts_are_one_line_naming_the_place(tmp_path, case):
    root = make_folder(tmp_path / "d")
    kw = {}
    if case == "empty_class":
        (root / "train" / "fish").mkdir()
        expect = [os.path.join("train", "fish"), "empty class folder"]
    elif case == "only_in_test":
        write_image(root / "test" / "zebra" / "0.png")
        expect = [os.path.join("test", "zebra"), "'zebra' appears in test but not in train"]
    elif case == "not_an_image":
        (root / "val" / "cat" / "notes.txt").write_text("hi")
        expect = ["notes.txt", "not an image file"]
    elif case == "no_test":
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (root / "test").rmdir()
        expect = [str(root / "test"), "not found"]
    else:
        kw, expect = {"group_by": ["site"]}, ["groups.csv", "not found", "`data.group_by`"]
    with pytest.raises(DataError) as e:
        build(root, **kw)
    assert "\n" not in str(e.value)
    for fragment in expect:
        assert fragment in str(e.value)


def test_a_file_that_does_not_decode_is_named(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "cat" / "005.jpg"
    bad.write_bytes(b"not a jpeg at all")  # refused when the dataset is loaded (its header)
    with pytest.raises(DataError, match=re.escape("005.jpg: not an image file")):
        build(root)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)  # enough pixel data that a cut leaves the header whole
    good = bad.read_bytes()
    bad.write_bytes(good[: int(len(good) * 0.7)])  # a good header, a cut body: named when it is decoded
    b = build(root)
    i = next(i for i in range(len(b.train)) if b.train.loader.name(i) == str(bad))
    with pytest.raises(DataError, match=re.escape("005.jpg: cannot decode image")):
        b.train[i]


def test_groups_from_csv_with_group_by(tmp_path):
    root = make_folder(tmp_path / "d", train={"cat": 2, "dog": 2}, n_eval=1)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.*"))
    rows = [[f, "A" if f.endswith(".png") else "B"] for f in files]
    write_csv(root / "groups.csv", ["file", "site"], rows)
    b = build(root, group_by=["site"])
    assert b.grouping.group_names == ("cat_site=A", "cat_site=B", "dog_site=A", "dog_site=B")
    assert b.group_counts("train").tolist() == [1, 1, 1, 1]  # 000.png (A) and 001.jpg (B) per class
    write_csv(root / "groups.csv", ["file", "site"], rows[1:])
    with pytest.raises(DataError, match=re.escape(f"groups.csv: no row for image '{files[0]}'")):
        build(root, group_by=["site"])
    write_csv(root / "groups.csv", ["file", "site"], [*rows, ["train/cat/gone.png", "A"]])
    gone = "groups.csv: line 10, column 'file': 'train/cat/gone.png' is not an image"
    with pytest.raises(DataError, match=re.escape(gone)):
        build(root, group_by=["site"])


def test_imbalance_ratio_keeps_the_long_tail_profile(tmp_path):
    root = make_folder(tmp_path / "d", train={"a": 40, "b": 40, "c": 40, "d": 30})
    full = build(root)
    lt = build(root, imbalance_ratio=10)
    # n_max = 40; class k keeps floor(40 * 10^(-k/3)): 40, 18, 8, 4
    assert long_tail_counts(40, 4, 10).tolist() == [40, 18, 8, 4]
    assert lt.class_counts("train").tolist() == [40, 18, 8, 4]
    assert lt.class_counts("val").tolist() == full.class_counts("val").tolist()  # evaluation untouched
    assert lt.class_counts("test").tolist() == full.class_counts("test").tolist()
    kept = [lt.train.loader.name(i) for i in range(len(lt.train))]
    again = build(root, imbalance_ratio=10)
    assert kept == [again.train.loader.name(i) for i in range(len(again.train))]  # fixed for a seed
    other = build(root, imbalance_ratio=10, data_seed=3)
    assert kept != [other.train.loader.name(i) for i in range(len(other.train))]  # seeded choice
    assert other.train.fingerprint() != lt.train.fingerprint()  # same labels, other images: another cache key
    assert set(kept) <= {full.train.loader.name(i) for i in range(len(full.train))}
    assert lt.train.fingerprint() != full.train.fingerprint()


def test_imbalance_ratio_applies_to_in_memory_datasets_and_warns_on_short_classes(tmp_path):
    b = load_dataset(DataConfig(dataset="scanner-digits", imbalance_ratio=4))
    counts = b.class_counts("train").tolist()
    base = load_dataset(DataConfig(dataset="scanner-digits")).class_counts("train")
    expected = long_tail_counts(int(base.max()), 10, 4.0)
    assert counts == np.minimum(expected, base.numpy()).tolist()
    short = [k for k in range(10) if base[k] < expected[k]]
    assert len([w for w in b.warnings if "fewer than" in w]) == len(short)
    assert b.train.inputs.shape[0] == sum(counts)


SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_inspect_shows_long_tailed_counts_through_the_cli(tmp_path):
    root = make_folder(tmp_path / "d", train={"a": 40, "b": 40, "c": 40, "d": 30})
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["data", "inspect", "--dataset", "imagefolder", "--root", str(root), "--imbalance-ratio", "10", "--json"]
    r = subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["train"] == {"a": 40, "b": 18, "c": 8, "d": 4}
    (root / "train" / "e").mkdir()
    r = subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty class folder" in r.stderr


def test_a_robust_teacher_trains_on_an_imagefolder_with_the_default_workers(tmp_path, capsys):
    # Validation-driven weights decode the validation split with the run's loader workers, whose
    # default (None: the machine's cores) must be resolved first.
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--root", str(make_folder(tmp_path / "d")), "--image-size", "8",
            "--model", "cnn-small", "--method", "robust-teacher", "--validation-every", "2", "--epochs", "1",
            "--batch-size", "16", "--quiet", "--out", str(out)]
    assert run_app(args) == 0, capsys.readouterr().err
    assert len((out / "group_weights.csv").read_text().splitlines()) > 2


def test_one_epoch_train_on_an_imagefolder(tmp_path, capsys):
    root = make_folder(tmp_path / "d", val=False)
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--model", "cnn-small",
            "--epochs", "1", "--imbalance-ratio", "3", "--quiet", "--out", str(out)]
    assert run_app(args) == 0, capsys.readouterr().err
    final = json.loads((out / "final.json").read_text())
    assert final["splits"]["test"]["n"] == 6
    assert set(final["splits"]["test"]["class_acc"]) == {"bird", "cat", "dog"}


def test_a_symbolic_link_out_of_the_root_is_refused_unless_allowed(tmp_path):
    root = make_folder(tmp_path / "d")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_image(outside / "x.png", value=10, size=(9, 7))
    (root / "train" / "cat" / "link.png").symlink_to(outside / "x.png")  # a file link
    with pytest.raises(DataError, match=r"link\.png: leaves .* through a symbolic link \(to .*x\.png\)"):
        build(root)
    (root / "train" / "cat" / "link.png").unlink()
    (root / "train" / "dog" / "more").symlink_to(outside, target_is_directory=True)  # a folder link
    with pytest.raises(DataError, match=r"more/x\.png: leaves .* through a symbolic link"):
        build(root)
    b = build(root, allow_outside_root=True)
    assert b.class_counts("train").tolist() == [30, 10, 21]
    inside = root / "train" / "bird" / "alias.png"
    inside.symlink_to(root / "train" / "bird" / "000.png")  # a link that stays inside is fine
    (root / "train" / "dog" / "more").unlink()
    assert build(root).class_counts("train").tolist() == [31, 10, 20]


def test_a_folder_link_loop_is_one_line_not_an_endless_walk(tmp_path, capsys):
    root = make_folder(tmp_path / "d")
    nested = root / "train" / "cat" / "a"
    nested.mkdir()
    write_image(nested / "y.png", value=10, size=(9, 7))
    (nested / "back").symlink_to(root / "train" / "cat", target_is_directory=True)  # a loop
    with pytest.raises(DataError, match=r"cat/a/back: a link to a folder already read below .*cat"):
        build(root)
    args = ["data", "inspect", "--dataset", "imagefolder", "--root", str(root), "--image-size", "8"]
    assert run_app(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "back" in err
    # A second path to a folder read already (its images would count twice) is refused the same way.
    (nested / "back").unlink()
    (root / "train" / "cat" / "twice").symlink_to(nested, target_is_directory=True)
    with pytest.raises(DataError, match=r"already read"):
        build(root)
    (root / "train" / "cat" / "twice").unlink()
    assert build(root).class_counts("train").tolist() == [30, 11, 20]


@pytest.mark.parametrize(("workers", "batch"), [(0, 256), (2, 5)])
def test_decoded_split_holds_the_same_inputs_once_decoded(tmp_path, workers, batch):
    val = build(make_folder(tmp_path / "d")).splits["val"]
    decoded = val.decoded(max_bytes=1 << 20, num_workers=workers, batch_size=batch)
    assert decoded.inputs is not None and decoded.inputs.shape == (len(val), 3, 8, 8)
    for i in range(len(val)):
        x, y, g, j = decoded[i]
        x0, y0, g0, j0 = val.without_augmentation()[i]
        assert torch.equal(x, x0) and (y, g, j) == (y0, g0, j0)
    # Over the budget (or in memory already) it stays the lazily decoding view.
    assert val.decoded(max_bytes=len(val) * 3 * 8 * 8 * 4 - 1).inputs is None
    assert decoded.decoded(max_bytes=0).inputs is decoded.inputs


def test_validation_driven_weights_decode_the_validation_split_once(tmp_path, monkeypatch):
    """A robust teacher draws a validation batch every K steps: its images are decoded at the first
    draw only, for the draws and every validation at once, and lambda follows the same trajectory as
    when every draw decodes them."""
    from groupdistil.data.images import ImageFiles
    from groupdistil.training import trainer

    root = make_folder(tmp_path / "d", n_eval=6)
    decoded: list[str] = []
    decode = ImageFiles.__call__
    monkeypatch.setattr(ImageFiles, "__call__", lambda self, i: decoded.append(str(self.paths[i])) or decode(self, i))
    weights = {}
    for cap in (trainer.LAMBDA_VAL_MAX_BYTES, 0):
        monkeypatch.setattr(trainer, "LAMBDA_VAL_MAX_BYTES", cap)
        decoded.clear()
        out = tmp_path / f"run-{cap}"
        args = ["train", "--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--model", "cnn-small",
                "--method", "robust-teacher", "--validation-every", "2", "--batch-size", "8", "--epochs", "2",
                "--num-workers", "0", "--quiet", "--out", str(out)]
        assert run_app(args) == 0
        weights[cap] = (out / "group_weights.csv").read_text()
        # 60 training images in batches of 8: 16 steps, a draw every 2. With the cap, the first draw
        # decodes the 18 validation images, held for the draws and every evaluation (the size check
        # before it decodes one more image). Without it, the first epoch's validation decodes them for
        # every evaluation (tests/test_loaders.py) and each of the 8 draws decodes them again.
        val = sum(p.startswith(str(root / "val")) for p in decoded)
        assert val == (18 + 1 if cap else 18 + 8 * 18 + 1), cap
    assert weights[trainer.LAMBDA_VAL_MAX_BYTES] == weights[0]
    assert len(weights[0].splitlines()) > 5  # lambda moved at many draws


@pytest.mark.parametrize("workers", ["0", "2"])
def test_each_split_is_decoded_once_for_every_pass_over_it(tmp_path, monkeypatch, workers):
    """The training epochs after the first read the inputs the first decoded; every epoch's validation
    and the final evaluation use the batches the first validation decoded. The run is the run that
    decodes them at every pass: the same metrics, weights and selection."""
    from groupdistil.data.images import ImageFiles

    root = make_folder(tmp_path / "d", n_eval=6)
    decoded: list[str] = []
    decode = ImageFiles.__call__
    monkeypatch.setattr(ImageFiles, "__call__", lambda self, i: decoded.append(str(self.paths[i])) or decode(self, i))
    runs = {}
    for name, budget in (("held", "1"), ("unheld", "0")):  # the default (1 GiB), and nothing held
        decoded.clear()
        out = tmp_path / name
        args = ["train", "--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--model",
                "cnn-small", "--batch-size", "8", "--epochs", "3", "--num-workers", workers, "--quiet",
                "--hold-decoded-gb", budget, "--out", str(out)]
        assert run_app(args) == 0
        final = json.loads((out / "final.json").read_text())
        lines = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] != "time"]
        weights = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
        runs[name] = final["splits"], final["selected_epoch"], lines, weights
        if workers == "0":  # decoded in this process: counted (workers decode in theirs)
            passes = 1 if name == "held" else 4  # three epochs (or validations) and the final evaluation
            for split, n in (("train", 60), ("val", 18), ("test", 18)):
                want = 1 if split == "test" else passes
                assert sum(p.startswith(str(root / split)) for p in decoded) == want * n, (name, split)
    (s1, e1, l1, w1), (s2, e2, l2, w2) = runs["held"], runs["unheld"]
    assert (s1, e1, l1) == (s2, e2, l2) and len(l1) == 6 and s1["train"]["n"] == 60
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_teachers_pass_decodes_the_training_split_for_the_whole_run(tmp_path, monkeypatch, workers):
    """A teacher's pass over the training split (a cache miss) keeps the inputs it decodes: a second
    teacher's pass, every epoch and the final evaluation read them. The run is the run that decodes
    them at every pass: the same teacher logits, metrics, weights and selection."""
    from groupdistil.data.images import ImageFiles

    root = make_folder(tmp_path / "d", n_eval=6)
    common = ["--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--batch-size", "8",
              "--num-workers", workers, "--quiet"]
    teachers = []
    for seed in ("0", "1"):  # two teachers of other weights: two cache keys, two passes
        teachers.append(tmp_path / f"teacher{seed}")
        assert run_app(["train", "--model", "cnn-small", "--epochs", "1", "--seed", seed, "--out",
                        str(teachers[-1]), *common]) == 0
    decoded: list[str] = []
    decode = ImageFiles.__call__
    monkeypatch.setattr(ImageFiles, "__call__", lambda self, i: decoded.append(str(self.paths[i])) or decode(self, i))
    runs = {}
    for name, budget in (("held", "1"), ("unheld", "0")):
        decoded.clear()
        out = tmp_path / name
        assert run_app(["distill", "--method", "groupdistil", "--model", "linear", "--epochs", "3", "--teacher",
                        ",".join(str(t / "checkpoints" / "best.pt") for t in teachers), "--teacher-cache-dir",
                        str(tmp_path / f"cache-{name}"), "--hold-decoded-gb", budget, "--out", str(out), *common]) == 0
        final = json.loads((out / "final.json").read_text())
        lines = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] != "time"]
        weights = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
        logits = sorted(np.load(p).tobytes() for p in (tmp_path / f"cache-{name}").glob("*.npy"))
        runs[name] = final["splits"], final["selected_epoch"], lines, weights, logits
        if workers == "0":  # decoded in this process: counted
            train = sum(p.startswith(str(root / "train")) for p in decoded)
            # two teachers' passes, three epochs and the final evaluation, or the first pass alone
            assert train == (1 if name == "held" else 6) * 60, name
            assert final["time"]["teacher_images_per_s"] > 0
    (s1, e1, l1, w1, t1), (s2, e2, l2, w2, t2) = runs["held"], runs["unheld"]
    assert (s1, e1, l1) == (s2, e2, l2) and len(l1) == 6
    assert len(t1) == 2 and t1 == t2 and t1[0] != t1[1]
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
