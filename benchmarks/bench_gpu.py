"""GPU throughput: a ResNet-18 student at 224 px on synthetic input, images per second for a training
step with no teacher, with cached teacher logits (KD and GroupDistil) and with a ResNet-50 teacher run
online, in float32, bf16 and fp16 (with a grad scaler), channels_last on CUDA.

Figures: images/s per variant, the online teacher's cost over the cached one, and GroupDistil's step
over KD's. Meant for a CUDA machine (`python benchmarks/run.py --only gpu --out benchmarks/results/gpu`);
on a CPU it runs only with ``--quick``, at 32 px and batch 8, to check that the script works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from groupdistil import ERM, KD, GroupDistil
from groupdistil.models import create_model
from groupdistil.training.devices import autocast, make_scaler

N_CLASSES = 10
N_GROUPS = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(device: torch.device, size: int, batch: int, amp: str) -> dict[str, Callable[[], None]]:
    """One training-step callable per variant, sharing one student, teacher and batch."""
    torch.manual_seed(0)
    channels_last = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student = create_model("resnet18", N_CLASSES).to(device, memory_format=fmt)
    teacher = create_model("resnet50", N_CLASSES).to(device, memory_format=fmt).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    scaler = make_scaler(device, amp)
    # Host tensors in pinned memory, copied without blocking, as the engine's loaders do on CUDA.
    pin = device.type == "cuda"
    x_host = torch.randn(batch, 3, size, size, pin_memory=pin)
    y = torch.randint(0, N_CLASSES, (batch,), device=device)
    g = torch.randint(0, N_GROUPS, (batch,), device=device)
    with torch.no_grad(), autocast(device, amp):
        cached = teacher(x_host.to(device)).float()
    objectives = {"erm": ERM(), "kd": KD(0.5, 4.0), "groupdistil": GroupDistil(N_GROUPS, 0.5, 4.0).to(device)}

    def step(name: str, online: bool) -> Callable[[], None]:
        objective = objectives[name]

        def go() -> None:
            x = x_host.to(device, non_blocking=True).contiguous(memory_format=fmt)
            with autocast(device, amp):
                logits = student(x)
                t = None
                if name != "erm":
                    if online:
                        with torch.no_grad():
                            t = teacher(x)
                    else:
                        t = cached
            loss = objective(logits.float(), y, g, t).loss
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            _sync(device)

        return go

    return {
        "no_teacher": step("erm", False),
        "kd_cached": step("kd", False),
        "groupdistil_cached": step("groupdistil", False),
        "kd_online": step("kd", True),
        "groupdistil_online": step("groupdistil", True),
    }


def run(repeats: int, timer, quick: bool = False) -> list[dict[str, Any]]:
    cuda = torch.cuda.is_available()
    if not cuda and not quick:
        return [{"case": "no CUDA device: not measured (run on a GPU machine, or --quick for a CPU check)"}]
    device = torch.device("cuda" if cuda else "cpu")
    size, batch = (224, 256) if cuda and not quick else (32, 8)
    # The CPU check runs float32 only: bf16 autocast on a CPU without bf16 instructions is about 20x
    # slower (measured on an AVX2 machine), which would make the check take minutes.
    precisions = ["none", "bf16", "fp16"] if cuda else ["none"]
    if cuda:
        torch.backends.cudnn.benchmark = True
    rows = []
    for amp in precisions:
        med = timer(_setup(device, size, batch, amp), repeats=repeats, warmup=3)
        row: dict[str, Any] = {"case": f"resnet18 {size}px B={batch}, teacher resnet50, amp {amp}"}
        row.update({f"{k}_img_s": batch / v for k, v in med.items()})
        row["online_over_cached"] = med["kd_online"] / med["kd_cached"]
        row["groupdistil_over_kd"] = med["groupdistil_cached"] / med["kd_cached"]
        row["cached_over_no_teacher"] = med["kd_cached"] / med["no_teacher"]
        rows.append(row)
    if cuda:
        rows.append({"case": f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}"})
    return rows
