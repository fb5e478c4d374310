"""The paper-scale path end to end, through the command line, on a small Waterbirds-layout folder of
real JPEG files (500 x 375, as the release's): pretrained group-DRO teacher -> cached logits ->
GroupDistil student from a torchvision-named ResNet-18 file (.pth and .safetensors) -> report."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import write_csv
from groupdistil.checkpoint import file_sha256
from groupdistil.cli.app import run_app
from groupdistil.models import create_model
from groupdistil.training import engine

SPEC = [(y, place, split) for split, n in ((0, 3), (1, 1), (2, 1)) for y in (0, 1) for place in (0, 1)
        for _ in range(n)]  # every group in every split; 12 / 4 / 4 images


def _waterbirds(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i, (y, place, split) in enumerate(SPEC):
        name = f"{'001.Black_footed_Albatross' if y else '002.Laysan'}/img_{i}.jpg"
        # A smooth background (the "place") with a textured blob (the "bird"): a photo-like JPEG.
        yy, xx = np.mgrid[0:375, 0:500]
        img = np.stack([(xx * 0.3 + 60 * place) % 255, (yy * 0.4 + 90 * y) % 255, (xx + yy) * 0.2 % 255], -1)
        img[100:280, 150:350] += rng.normal(0, 40, (180, 200, 3))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name, quality=90)
        rows.append([i + 1, name, y, split, place, f"place/{i}.jpg"])
    write_csv(root / "metadata.csv", ["img_id", "img_filename", "y", "split", "place", "place_filename"], rows)
    return root


@pytest.mark.slow
def test_pretrained_teacher_cached_logits_student_and_report(tmp_path, monkeypatch, capsys):
    data = _waterbirds(tmp_path / "waterbirds")
    assert Image.open(next(data.rglob("*.jpg"))).size == (500, 375)
    torch.manual_seed(123)  # "ImageNet" weights: any torchvision-named ResNet-18 with 1000 classes
    weights = create_model("resnet18", 1000, input_shape=(3, 224, 224)).state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "resnet18.safetensors"))

    starts: list[dict[str, torch.Tensor]] = []
    real_fit = engine.fit

    def recording_fit(model, *args, **kwargs):  # the model as training receives it: step 0
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr("groupdistil.app.runner.fit", recording_fit)
    common = ["--dataset", "waterbirds", "--root", str(data), "--image-size", "64", "--model", "resnet18",
              "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--num-workers", "0"]
    runs = tmp_path / "runs"
    assert run_app(["train", *common, "--pretrained", str(tmp_path / "resnet18.safetensors"),
                    "--method", "group-dro", "--step-size", "0.01", "--adjustment", "2", "--quiet",
                    "--out", str(runs / "teacher")]) == 0
    assert run_app(["distill", *common, "--pretrained", str(tmp_path / "resnet18.pth"),
                    "--teacher", str(runs / "teacher/checkpoints/best.pt"), "--method", "groupdistil",
                    "--teacher-cache-dir", str(tmp_path / "cache"), "--out", str(runs / "student")]) == 0
    assert "cache miss" in capsys.readouterr().out  # the teacher's logits were computed once and cached
    assert run_app(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert "2 runs" in capsys.readouterr().out and (tmp_path / "report" / "report.html").is_file()

    for start in starts:  # teacher and student: every backbone tensor is the file's at step 0
        assert set(start) == set(weights)
        for k, v in weights.items():
            if not k.startswith("fc."):
                assert torch.equal(start[k], v), k
        assert start["fc.weight"].shape == (2, 512)  # re-initialised for Waterbirds' 2 classes
    for run, file in (("teacher", "resnet18.safetensors"), ("student", "resnet18.pth")):
        cfg = yaml.safe_load((runs / run / "config.yaml").read_text())
        assert cfg["model"]["pretrained_sha256"] == file_sha256(tmp_path / file)
