"""The 5-seed studies of benchmarks/results/, one command each:

    python benchmarks/experiments/study.py groups spurious-digits   # students x teachers, data groups
    python benchmarks/experiments/study.py groups scanner-digits
    python benchmarks/experiments/study.py classes digits-lt        # class-robust teachers x students
    python benchmarks/experiments/study.py ablation spurious-digits  # per-group averaging vs DRO, ensembles
    python benchmarks/experiments/study.py calibrate digits-lt      # robust students from calibrated teachers
    python benchmarks/experiments/study.py nolabels spurious-digits # training group labels withheld
    python benchmarks/experiments/study.py defaults digits-lt       # class-robust student: length and T
    python benchmarks/experiments/study.py real-lt /path/to/cifar10  # class-robust study, CIFAR-10-LT images
    python benchmarks/experiments/study.py real-lt10 /path/to/cifar10  # ERM teacher's students, imbalance 10

Runs go under runs/bench/<dataset>/ (resumable: finished runs are skipped), then
`groupdistil report` writes benchmarks/results/<dataset>/. Every method gets the same budget
(BUDGET below); the only method hyper-parameter, the DRO step size eta = 0.01 (METHODS.md's default),
was checked on validation worst-group accuracy against 0.03 and 0.1 (see benchmarks/results/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from groupdistil.app.sweep import SweepRun, expand, run_sweep

SEEDS = 5
BUDGET: dict[str, Any] = {
    "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"},
    "train": {"epochs": 20, "batch_size": 64},
}
TEACHER_MODEL, STUDENT_MODEL = "cnn", "cnn-small"
KD = {"alpha": 0.5, "temperature": 4.0}
# digits-lt students: T = 2, chosen on validation (seed 0, ERM teacher; see benchmarks/results/README.md).
# At T = 4 the teacher's soft class membership is so flat that lambda pushes every sample to rare classes.
KD_LT = {"alpha": 0.5, "temperature": 2.0}


def config(dataset: str, root: Path, name: str, role: str, method: str, teacher: str | None = None,
           teacher_adjust: str = "none", data: dict[str, Any] | None = None, **objective: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name, "role": role, "out": str(root),
        "data": {"dataset": dataset, **(data or {})},
        "model": {"name": TEACHER_MODEL if role == "teacher" else STUDENT_MODEL},
        "objective": {"method": method, **objective}, **BUDGET,
    }
    if teacher is not None:
        raw["teacher"] = {"checkpoints": [str(root / teacher / "seed{seed}" / "checkpoints" / "best.pt")],
                          "adjust": teacher_adjust, "cache_dir": str(root / "teacher-cache")}
    return raw


def groups_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    eta = {"step_size": 0.01}
    runs = [
        config(dataset, root, "teacher-erm", "teacher", "erm"),
        config(dataset, root, "teacher-group-dro", "teacher", "group-dro", **eta),
        config(dataset, root, "erm", "student", "erm"),
        config(dataset, root, "reweight", "student", "reweight"),
        config(dataset, root, "group-dro", "student", "group-dro", **eta),
    ]
    for t in ("erm", "group-dro"):
        runs += [
            config(dataset, root, f"kd<-{t}", "student", "kd", f"teacher-{t}", **KD),
            config(dataset, root, f"groupdistil<-{t}", "student", "groupdistil", f"teacher-{t}", **KD, **eta),
            config(dataset, root, f"groupdistil-kd<-{t}", "student", "groupdistil", f"teacher-{t}", **KD, **eta,
                   dro_on="kd"),
        ]
    return runs


#: The step-size grid of the ablation: 0 (q fixed, uniform over groups) and 0.001 .. 1 by decades.
ETAS = (0.0, 0.001, 0.01, 0.1, 1.0)
#: Benchmarks where the ablation also trains students from teacher ensembles (issue 14, item 3).
ENSEMBLE_DATASETS = ("spurious-digits", "scanner-digits")


def ensemble_runs(dataset: str, root: Path) -> list[SweepRun]:
    """Students of a 4-teacher ensemble: for student seed s, the ERM and group-DRO teachers of seeds s
    and s+1 (mod 5); AGRE-KD's biased reference is the ERM teacher of seed s+2, outside the ensemble."""
    def ckpt(name: str, seed: int) -> str:
        return str(root / name / f"seed{seed % SEEDS}" / "checkpoints" / "best.pt")

    runs = []
    for s in range(SEEDS):
        members = [ckpt(t, s + k) for t in ("teacher-erm", "teacher-group-dro") for k in (0, 1)]
        for name, method, combine, extra in (("kd<-ensemble", "kd", "mean", {}),
                                             ("agre-kd<-ensemble", "kd", "agre-kd", {}),
                                             ("groupdistil<-ensemble", "groupdistil", "mean", {"step_size": 0.01})):
            raw = config(dataset, root, name, "student", method, "teacher-erm", **KD, **extra)
            raw["teacher"].update(checkpoints=members, combine=combine)
            if combine == "agre-kd":
                raw["teacher"]["reference"] = ckpt("teacher-erm", s + 2)
            runs.append(expand(raw, SEEDS, {}, name)[s])
    return runs


def ablation_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    """Which mechanism carries GroupDistil's gain: per-group averaging (eta = 0, or 1/n_g weights) or
    the dynamic DRO weights (eta > 0, chosen on validation), with and without a teacher."""
    runs = [
        config(dataset, root, "teacher-erm", "teacher", "erm"),
        config(dataset, root, "reweight", "student", "reweight"),
        config(dataset, root, "kd<-erm", "student", "kd", "teacher-erm", **KD),
        config(dataset, root, "kd-reweight<-erm", "student", "kd-reweight", "teacher-erm", **KD),
    ]
    for eta in ETAS:
        runs += [
            config(dataset, root, f"group-dro-eta={eta}", "student", "group-dro", step_size=eta),
            config(dataset, root, f"groupdistil<-erm-eta={eta}", "student", "groupdistil", "teacher-erm", **KD,
                   step_size=eta),
        ]
    if dataset in ENSEMBLE_DATASETS:
        # The group-DRO teacher: an ensemble member, and GroupDistil from it for "the best single
        # teacher" (chosen on validation).
        runs.append(config(dataset, root, "teacher-group-dro", "teacher", "group-dro", step_size=0.01))
        runs.append(config(dataset, root, "groupdistil<-group-dro", "student", "groupdistil", "teacher-group-dro",
                           **KD, step_size=0.01))
    return runs


def calibrate_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    """Robust students (class-robust-kd, mode robust) from ERM, balanced and robust teachers, with the
    teacher's probabilities recalibrated by each ``teacher.calibrate`` option."""
    # The references (robust<-erm, and "none": robust<-balanced / robust<-robust) are the classes
    # study's runs.
    runs = [r for r in classes_study(dataset, root) if r["name"] in ("teacher-balanced", "teacher-robust")]
    for calibrate in ("undo-adjust", "vector", "temperature"):
        for short in ("balanced", "robust"):
            raw = config(dataset, root, f"robust<-{short}-{calibrate}", "student", "class-robust-kd",
                         f"teacher-{short}", mode="robust", **KD_LT)
            raw["teacher"]["calibrate"] = calibrate
            runs.append(raw)
    return runs


def best_pt(root: Path, run: str) -> str:
    return str(root / run / "seed{seed}" / "checkpoints" / "best.pt")


def nolabels_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    """Training group labels withheld: GroupDistil on groups inferred from the ERM teacher (its errors,
    or k-means clusters with k in {2, 3}) or from the ERM student's errors (JTT's error set), against
    KD, JTT (lambda_up in {5, 20, 50}, the ERM student as identification model) and GroupDistil with
    the true groups. Validation groups select checkpoints and hyper-parameters (the group source, k,
    lambda_up), as in JTT and GEORGE; they are never trained on."""
    eta = {"step_size": 0.01}
    runs = [
        config(dataset, root, "teacher-erm", "teacher", "erm"),
        config(dataset, root, "erm", "student", "erm"),
        config(dataset, root, "kd<-erm", "student", "kd", "teacher-erm", **KD),
        config(dataset, root, "groupdistil<-erm", "student", "groupdistil", "teacher-erm", **KD, **eta),
        config(dataset, root, "groupdistil-errors<-erm", "student", "groupdistil", "teacher-erm",
               data={"train_groups": "teacher-errors"}, **KD, **eta),
    ]
    runs.append(config(dataset, root, "groupdistil-erm-errors<-erm", "student", "groupdistil", "teacher-erm",
                       data={"train_groups": "teacher-errors", "group_reference": best_pt(root, "erm")}, **KD, **eta))
    for k in (2, 3):
        runs.append(config(dataset, root, f"groupdistil-clusters{k}<-erm", "student", "groupdistil", "teacher-erm",
                           data={"train_groups": "teacher-clusters", "clusters": k}, **KD, **eta))
    for up in (5, 20, 50):
        runs.append(config(dataset, root, f"jtt-up{up}", "student", "jtt", upweight=float(up),
                           data={"train_groups": "teacher-errors", "group_reference": best_pt(root, "erm")}))
    return runs


def classes_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    runs = [
        config(dataset, root, "teacher-erm", "teacher", "erm"),
        config(dataset, root, "teacher-balanced", "teacher", "balanced"),
        # K = 4 gives about 30 validation updates of lambda in this budget, at the paper's eta = 0.1.
        config(dataset, root, "teacher-robust", "teacher", "robust-teacher", validation_every=4),
    ]
    teachers = [("erm", "teacher-erm", "none"), ("balanced", "teacher-balanced", "none"),
                ("robust", "teacher-robust", "none"), ("posthoc", "teacher-erm", "balanced")]
    for short, t, adjust in teachers:
        runs.append(config(dataset, root, f"kd<-{short}", "student", "kd", t, adjust, **KD_LT))
        for mode in ("standard", "balanced", "robust"):
            runs.append(config(dataset, root, f"{mode}<-{short}", "student", "class-robust-kd", t, adjust,
                               mode=mode, **KD_LT))
        for beta in (0.0, 0.25, 0.5, 0.75, 1.0):
            runs.append(config(dataset, root, f"tradeoff<-{short}-beta={beta}", "student", "class-robust-kd", t,
                               adjust, mode="tradeoff", beta=beta, **KD_LT))
    return runs


#: The class-robust study on real images (issue 21): CIFAR-10-LT = the imagefolder reader's train split
#: (ROOT/train/<class>/*.jpg, val a stratified 10% of it) at imbalance 100. The scale is fixed before
#: the first run so that the grid fits the 2-core machine: 16 x 16 pixels, 4 epochs, 3 seeds.
REAL_SEEDS = 3
REAL_DATA: dict[str, Any] = {"dataset": "imagefolder", "image_size": 16, "imbalance_ratio": 100.0}
REAL_BUDGET: dict[str, Any] = {"optim": BUDGET["optim"], "train": {"epochs": 4, "batch_size": 128}}
#: Students from each teacher, most informative first (a partial grid keeps the head of this list).
REAL_STUDENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("standard", {"mode": "standard"}), ("robust", {"mode": "robust"}),
    ("tradeoff", {"mode": "tradeoff", "beta": 0.5}), ("balanced", {"mode": "balanced"}),
    ("tradeoff", {"mode": "tradeoff", "beta": 0.25}), ("tradeoff", {"mode": "tradeoff", "beta": 0.75}),
)


def real_cfg(images: str, root: Path, name: str, role: str, method: str, teacher: str | None = None,
             data: dict[str, Any] | None = None, **objective: Any) -> dict[str, Any]:
    """One run of the real-image study: REAL_DATA on the image folder ``images`` (plus ``data``) with
    REAL_BUDGET."""
    raw = config("imagefolder", root, name, role, method, teacher, data={**REAL_DATA, "root": images, **(data or {})},
                 **objective)
    return {**raw, **REAL_BUDGET}


def at_imbalance(plan: list[dict[str, Any]], ratio: float) -> list[dict[str, Any]]:
    """The same runs on the long-tailed view of imbalance ``ratio`` instead of REAL_DATA's 100."""
    return [{**raw, "data": {**raw["data"], "imbalance_ratio": ratio}} for raw in plan]


def real_lt_study(images: str, root: Path, students: int = len(REAL_STUDENTS)) -> list[dict[str, Any]]:
    """Teachers ERM, balanced and robust, and from each the first ``students`` of REAL_STUDENTS,
    on the imagefolder at ``images`` (CIFAR-10's layout) with REAL_DATA and REAL_BUDGET."""
    # K = 8 gives 44 validation updates of lambda in 4 epochs of 88 steps, as K = 4 gives ~30 on digits-lt.
    runs = [real_cfg(images, root, "teacher-erm", "teacher", "erm"),
            real_cfg(images, root, "teacher-balanced", "teacher", "balanced"),
            real_cfg(images, root, "teacher-robust", "teacher", "robust-teacher", validation_every=8)]
    for mode, objective in REAL_STUDENTS[:students]:
        for short in ("erm", "balanced", "robust"):
            # Named as the digits-lt study names them: tradeoff<-erm-beta=0.5.
            name = f"tradeoff<-{short}-beta={objective['beta']}" if "beta" in objective else f"{mode}<-{short}"
            runs.append(real_cfg(images, root, name, "student", "class-robust-kd", f"teacher-{short}",
                                 **objective, **KD_LT))
    return runs


#: The training lengths of the length ablation (REAL_BUDGET's 4 epochs is the grid's).
REAL_LONG_EPOCHS = (16,)


def _at_t1(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """The grid run ``raw`` at T = 1 instead of its own temperature, named ``name``."""
    return {**raw, "name": name, "objective": {**raw["objective"], "temperature": 1.0}}


def real_lt_ablation(images: str, root: Path) -> list[dict[str, Any]]:
    """Two ablations of the robust student's collapse at T = 2 (benchmarks/results/cifar10-lt/README.md),
    each changing one thing in the grid's standard and robust students:

    - temperature: T = 1 instead of 2, from every teacher (a sharper teacher charges less soft class
      membership to the tail classes, the suspected cause);
    - training length: REAL_LONG_EPOCHS instead of 4, from the ERM teacher at T = 2 (on digits-lt the
      robust student from the ERM teacher collapsed at 10 epochs and not at 20)."""
    base = {r["name"]: r for r in real_lt_study(images, root, 2)}
    runs = [_at_t1(base[f"{mode}<-{short}"], f"{mode}<-{short}-T=1")
            for short in ("erm", "balanced", "robust") for mode in ("robust", "standard")]
    for epochs in REAL_LONG_EPOCHS:
        runs += [{**base[f"{mode}<-erm"], "name": f"{mode}<-erm-epochs={epochs}",
                  "train": {**base[f"{mode}<-erm"]["train"], "epochs": epochs}} for mode in ("robust", "standard")]
    return runs


def real_lt_at_t1(images: str, root: Path) -> list[dict[str, Any]]:
    """At T = 1 (class-robust-kd's default; the temperature ablation's working setting): the rest of
    the ERM teacher's students (balanced, tradeoff at each beta), for the tradeoff curve, and the
    robust student from the balanced and robust teachers with their training-time adjustment undone
    (``teacher.calibrate: undo-adjust``), the suspected cause of their collapse at T = 1."""
    grid = {r["name"]: r for r in real_lt_study(images, root)}
    erm_students = ("balanced<-erm", "tradeoff<-erm-beta=0.25", "tradeoff<-erm-beta=0.5", "tradeoff<-erm-beta=0.75")
    runs = [_at_t1(grid[name], f"{name}-T=1") for name in erm_students]
    for short in ("balanced", "robust"):
        raw = _at_t1(grid[f"robust<-{short}"], f"robust<-{short}-undo-adjust-T=1")
        runs.append({**raw, "teacher": {**raw["teacher"], "calibrate": "undo-adjust"}})
    return runs


def real_lt10_study(images: str, root: Path) -> list[dict[str, Any]]:
    """The ERM teacher's part of the grid at imbalance 10 (the rarest class 10x, not 100x, rarer than
    the commonest): the teacher and its standard, balanced and robust students at the grid's T = 2
    and, with only the temperature changed, at T = 1. Do the collapse at T = 2 and the gain at T = 1
    of imbalance 100 hold where the tail is less rare? (The whole grid at imbalance 10, 63 runs, did
    not fit the 2-core machine.)"""
    grid = {r["name"]: r for r in real_lt_study(images, root)}
    modes = ("standard", "balanced", "robust")
    runs = [grid["teacher-erm"], *(grid[f"{m}<-erm"] for m in modes)]
    runs += [_at_t1(grid[f"{m}<-erm"], f"{m}<-erm-T=1") for m in modes]
    return at_imbalance(runs, 10.0)


#: DKD's warm-up in the 4-epoch budget: 1 epoch (our choice; DKD warms up over 20 of 240 CIFAR epochs).
REAL_DKD_WARMUP = 1


def real_lt_students(images: str, root: Path) -> list[dict[str, Any]]:
    """Students from the ERM teacher at the grid's T = 2 beside the class-robust ones:

    - issue 21, item 4: plain KD, and GroupDistil (eta 0.01) on the true groups (the classes) and on
      label-free groups: the ERM teacher's errors, and 2 k-means clusters of its features per class;
    - issue 22: DKD and LTKD, plain (``ce + term``) and under the two robust aggregations
      (class-robust-kd's robust mode and GroupDistil over the classes); the robust aggregations over
      KD are ``robust<-erm`` and ``groupdistil<-erm``."""
    teacher, kd = "teacher-erm", {"alpha": KD["alpha"], "temperature": KD_LT["temperature"]}
    eta = {"step_size": 0.01}

    def run(name: str, method: str, data: dict[str, Any] | None = None, **objective: Any) -> dict[str, Any]:
        return real_cfg(images, root, name, "student", method, teacher, data=data, **objective)

    runs = [run("kd<-erm", "kd", **kd), run("groupdistil<-erm", "groupdistil", **kd, **eta),
            run("groupdistil-errors<-erm", "groupdistil", {"train_groups": "teacher-errors"}, **kd, **eta),
            run("groupdistil-clusters2<-erm", "groupdistil", {"train_groups": "teacher-clusters", "clusters": 2},
                **kd, **eta)]
    for term in ("dkd", "ltkd"):
        options = {"dkd_warmup": REAL_DKD_WARMUP} if term == "dkd" else {}
        runs += [run(f"{term}<-erm", term, temperature=KD_LT["temperature"], **options),
                 run(f"class-robust-kd+{term}<-erm", "class-robust-kd", mode="robust", kd_term=term, **kd, **options),
                 run(f"groupdistil+{term}<-erm", "groupdistil", kd_term=term, **kd, **eta, **options)]
    return runs


#: The library's default length (TrainConfig.epochs) beside the classes study's 20 epochs, and the
#: temperatures measured: 1 (ClassRobustKD's default since this study), the classes study's 2, and
#: KD's 4 (ClassRobustKD's default before it).
DEFAULT_EPOCHS, TEMPERATURES = 10, (1.0, KD_LT["temperature"], 4.0)


def defaults_study(dataset: str, root: Path) -> list[dict[str, Any]]:
    """Does a default run of the class-robust student collapse where a longer one works? The robust
    and standard students from the ERM teacher (the classes study's), with nothing but the length
    (10, the default, or 20 epochs) and the temperature (TEMPERATURES) changed."""
    runs = [config(dataset, root, "teacher-erm", "teacher", "erm")]
    for epochs in (DEFAULT_EPOCHS, BUDGET["train"]["epochs"]):
        for temperature in TEMPERATURES:
            for mode in ("robust", "standard"):
                raw = config(dataset, root, f"{mode}<-erm-T={temperature:g}-epochs={epochs}", "student",
                             "class-robust-kd", "teacher-erm", mode=mode, alpha=KD_LT["alpha"], temperature=temperature)
                runs.append({**raw, "train": {**raw["train"], "epochs": epochs}})
    return runs


STUDIES = {"groups": groups_study, "classes": classes_study, "ablation": ablation_study,
           "calibrate": calibrate_study, "nolabels": nolabels_study, "real-lt": real_lt_study,
           "defaults": defaults_study}


def main(kind: str, dataset: str, jobs: int = 2, students: int = len(REAL_STUDENTS)) -> int:
    """``dataset``: a built-in dataset's name, or for ``real-lt`` the CIFAR-10 image folder (and
    ``students``: how many of REAL_STUDENTS to train from each teacher)."""
    suffix = "" if kind in ("groups", "classes") else f"-{kind}"
    seeds = REAL_SEEDS if kind.startswith("real-lt") or kind == "defaults" else SEEDS
    if kind == "real-lt":
        root = Path("runs/bench/cifar10-lt")
        # The cheaper runs first: the grid, the students beside it, then the ablations (16 epochs).
        plan = real_lt_study(dataset, root, students) + real_lt_students(dataset, root)
        plan += real_lt_ablation(dataset, root) + real_lt_at_t1(dataset, root)
        dataset, suffix = "cifar10-lt", ""
    elif kind == "real-lt10":  # the ERM teacher's part of the grid at imbalance 10, at T = 2 and 1
        plan = real_lt10_study(dataset, Path("runs/bench/cifar10-lt10"))
        dataset, suffix = "cifar10-lt10", ""
    else:
        plan = STUDIES[kind](dataset, Path("runs/bench") / f"{dataset}{suffix}")
    root = Path("runs/bench") / f"{dataset}{suffix}"
    failed = 0
    # Teachers first (students read their checkpoints), then the ERM student (JTT's identification
    # model), then everything else.
    stages = {"teacher": lambda r: r["role"] == "teacher", "erm": lambda r: r["name"] == "erm",
              "student": lambda r: r["role"] == "student" and r["name"] != "erm"}
    for stage, member in stages.items():
        runs = [r for raw in plan if member(raw) for r in expand(raw, seeds, {}, raw["name"])]
        if stage == "student" and kind == "ablation" and dataset in ENSEMBLE_DATASETS:
            runs += ensemble_runs(dataset, root)
        failed += sum(r.status == "failed" for r in run_sweep(runs, root / f"index-{stage}.json", jobs=jobs))
    out = Path("benchmarks/results") / f"{dataset}{suffix}"
    subprocess.run([sys.executable, "-m", "groupdistil", "report", str(root), "--out", str(out),
                    "--title", f"{dataset}{suffix}: {seeds} seeds"], check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5])))
