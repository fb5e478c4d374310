"""The training loop on a tiny in-memory dataset: every objective, outputs, exact resume."""

import json

import pytest
import torch
from torch import nn

from groupdistil.checkpoint import load_checkpoint
from groupdistil.config import OptimConfig, TrainConfig
from groupdistil.data.base import GroupedDataset
from groupdistil.errors import NumericalError
from groupdistil.loaders import HeldPasses, eval_loader
from groupdistil.objectives import build_objective
from groupdistil.runs.outputs import RunWriter
from groupdistil.teachers import Teacher, TeacherMember
from groupdistil.training import engine, evaluation
from groupdistil.training.engine import fit, weight_names
from groupdistil.training.evaluation import evaluate, evaluate_splits
from groupdistil.training.timing import PHASES


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def _objective(name, bundle, **opts):
    return build_objective(
        name, n_groups=bundle.n_groups, n_classes=bundle.n_classes,
        group_counts=bundle.group_counts().float(), class_prior=bundle.class_prior(), **opts,
    )


def _metric_lines(path):
    """metrics.jsonl without its ``time`` lines (measurements: they differ between identical runs)."""
    return "".join(x + "\n" for x in path.read_text().splitlines() if json.loads(x)["split"] != "time")


def _teacher(bundle):
    t = _net(1)
    fit(t, _objective("erm", bundle), bundle, train=TrainConfig(epochs=2, batch_size=32),
        optim=OptimConfig(lr=0.1), quiet=True)
    return Teacher([TeacherMember(t)], bundle.class_prior())


@pytest.mark.parametrize(
    "method,opts",
    [("erm", {}), ("reweight", {}), ("group-dro", {"step_size": 0.5}), ("balanced", {}),
     ("robust-teacher", {"validation_every": 3}), ("kd", {}), ("groupdistil", {"step_size": 0.5}),
     ("groupdistil", {"dro_on": "kd"}), ("class-robust-kd", {"mode": "tradeoff", "beta": 0.5}),
     ("class-robust-kd", {"lambda_source": "val", "validation_every": 2}), ("dkd", {}), ("ltkd", {}),
     ("groupdistil", {"kd_term": "dkd"}), ("class-robust-kd", {"kd_term": "ltkd"})],
)
def test_every_objective_trains_and_logs(blobs, tmp_path, method, opts):
    obj = _objective(method, blobs, **opts)
    teacher = _teacher(blobs) if obj.requires_teacher else None
    writer = RunWriter(tmp_path, weight_names(obj, blobs), tensorboard=False)
    writer.start("x: 1\n", None)
    res = fit(_net(), obj, blobs, train=TrainConfig(epochs=2, batch_size=32), optim=OptimConfig(lr=0.1),
              teacher=teacher, out=tmp_path, writer=writer, meta={"model_name": "t", "num_classes": 2},
              quiet=True)
    assert res.best_epoch in (0, 1)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["split"]) for x in lines] == [(0, "train"), (0, "val"), (0, "time"),
                                                         (1, "train"), (1, "val"), (1, "time")]
    lines = [x for x in lines if x["split"] != "time"]
    # The separate terms of the loss are logged beside it (the distillation part when there is a teacher).
    assert set(lines[0]) >= ({"loss_ce", "loss_kd"} if obj.requires_teacher else {"loss_ce"})
    assert "loss_ce" not in lines[1]
    rows = (tmp_path / "group_weights.csv").read_text().splitlines()
    if obj.weights_over is not None:
        steps_per_epoch = -(-len(blobs.train) // 32)
        assert len(rows) == 1 + 2 * steps_per_epoch
        header = rows[0].split(",")
        assert header[:2] == ["step", "epoch"]
        last = [float(v) for v in rows[-1].split(",")[2:]]
        assert abs(sum(last) - 1) < 1e-5
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and "optimizer" in ck and "rng" in ck


def test_group_dro_moves_weight_to_the_worst_group(blobs):
    obj = _objective("group-dro", blobs, step_size=1.0)
    fit(_net(), obj, blobs, train=TrainConfig(epochs=3, batch_size=32), optim=OptimConfig(lr=0.1), quiet=True)
    q = obj.dro.q
    # The minority groups (label disagrees with attribute) are the hard ones.
    assert q[1] + q[2] > q[0] + q[3]


class _Stop(Exception):
    pass


def _sawtooth_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A grad scaler that doubles its scale after every good step, so that a short fp16 run on the
    CPU overflows every few steps (the default one would take 2000 steps to grow)."""
    return torch.amp.GradScaler(device.type, init_scale=2.0**10, growth_interval=1, enabled=amp == "fp16")


@pytest.mark.parametrize("amp,opts", [("none", {}), ("fp16", {}), ("none", {"kd_term": "dkd", "dkd_warmup": 4})])
def test_stopped_after_epoch_one_and_resumed_equals_uninterrupted(blobs, tmp_path, amp, opts, monkeypatch):
    # Under fp16 the checkpoint must carry the loss scale and its growth tracker: a fresh scaler
    # would skip other steps than the uninterrupted run's.
    monkeypatch.setattr(engine, "make_scaler", _sawtooth_scaler)
    cfg = TrainConfig(epochs=3, batch_size=32, seed=3, amp=amp)

    def run(out, stop_after=None, resume=False):
        torch.manual_seed(0)
        obj = _objective("groupdistil", blobs, step_size=0.5, **opts)
        model = _net()
        teacher = Teacher([TeacherMember(_net(7))], blobs.class_prior())
        writer = RunWriter(out, weight_names(obj, blobs), tensorboard=False)
        writer.start("", int(load_checkpoint(out / "checkpoints/last.pt")["epoch"]) if resume else None)
        seen = []

        def echo(msg):
            seen.append(msg)
            if stop_after is not None and len(seen) == stop_after:
                raise _Stop

        fit(model, obj, blobs, train=cfg, optim=OptimConfig(lr=0.1), teacher=teacher, out=out, writer=writer,
            meta={"model_name": "t", "num_classes": 2}, resume=resume, echo=echo)
        return model, obj

    full_model, full_obj = run(tmp_path / "full")
    with pytest.raises(_Stop):
        run(tmp_path / "cut", stop_after=1)
    # Torch RNG is disturbed in between, as a new process would have it.
    torch.rand(5)
    cut_model, cut_obj = run(tmp_path / "cut", resume=True)
    for a, b in zip(full_model.state_dict().values(), cut_model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full_obj.dro.q, cut_obj.dro.q)
    # DKD's warm-up weight follows the epoch, the resumed run's included: the third of 3 epochs.
    assert cut_obj.term.warmup_factor() == (0.75 if opts else 1.0)
    assert (tmp_path / "full/group_weights.csv").read_text() == (tmp_path / "cut/group_weights.csv").read_text()
    full_lines = _metric_lines(tmp_path / "full/metrics.jsonl")
    assert full_lines == _metric_lines(tmp_path / "cut/metrics.jsonl")
    overflows = [json.loads(x).get("overflow_steps") for x in full_lines.splitlines()]
    assert (overflows[-2] > 0) == (amp == "fp16")  # the scaler did skip steps (train line of epoch 3)


def test_fp16_steps_the_scaler_skips_leave_q_and_the_parameters_alone(blobs, tmp_path, monkeypatch):
    # A loss scale so large that every step's fp16 gradients overflow: the scaler skips each update,
    # and the engine undoes each q update with it.
    monkeypatch.setattr(engine, "make_scaler", lambda device, amp: torch.amp.GradScaler(
        device.type, init_scale=2.0**120, enabled=amp == "fp16"))
    obj = _objective("group-dro", blobs, step_size=1.0)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    writer = RunWriter(tmp_path, weight_names(obj, blobs), tensorboard=False)
    writer.start("", None)
    fit(model, obj, blobs, train=TrainConfig(epochs=1, batch_size=60, amp="fp16", device="cpu"),
        optim=OptimConfig(lr=0.1), out=tmp_path, writer=writer, meta={"model_name": "t", "num_classes": 2},
        quiet=True)
    assert torch.equal(obj.dro.q, torch.full((4,), 0.25))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    train = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert train["overflow_steps"] == 4 and train["skipped_steps"] == 0
    assert (tmp_path / "group_weights.csv").read_text().splitlines()[1:] == []  # no step was taken
    # The same run with a sane scale does train and move q: the test above measures something.
    monkeypatch.setattr(engine, "make_scaler", _sawtooth_scaler)
    fit(model, obj, blobs, train=TrainConfig(epochs=1, batch_size=60, amp="fp16", device="cpu"),
        optim=OptimConfig(lr=0.1), quiet=True)
    assert not torch.equal(obj.dro.q, torch.full((4,), 0.25))


def test_nonfinite_loss_stops_with_step_and_checkpoint(blobs, tmp_path):
    model = _net()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"step 1 \(epoch 1\)"):
        fit(model, _objective("erm", blobs), blobs, train=TrainConfig(epochs=1), optim=OptimConfig(),
            out=tmp_path, quiet=True)


def test_skip_nonfinite_counts_skipped_steps(blobs):
    model = _net()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    obj = _objective("group-dro", blobs)
    q0 = obj.dro.q.clone()
    res = fit(model, obj, blobs, train=TrainConfig(epochs=1, batch_size=60, skip_nonfinite=True),
              optim=OptimConfig(), quiet=True)
    assert res.skipped_steps == 4
    assert torch.equal(obj.dro.q, q0)  # NaN updates were rolled back


def test_weight_columns_name_groups_or_classes(blobs):
    assert weight_names(_objective("groupdistil", blobs), blobs) == list(blobs.grouping.group_names)
    assert weight_names(_objective("class-robust-kd", blobs), blobs) == list(blobs.grouping.class_names)
    assert weight_names(_objective("kd", blobs), blobs) == []


def test_each_epoch_records_where_its_time_went(blobs, tmp_path):
    obj = _objective("groupdistil", blobs, step_size=0.5)
    writer = RunWriter(tmp_path, weight_names(obj, blobs), tensorboard=False)
    writer.start("", None)
    said = []
    fit(_net(), obj, blobs, train=TrainConfig(epochs=2, batch_size=32), optim=OptimConfig(lr=0.1),
        teacher=_teacher(blobs), out=tmp_path, writer=writer, meta={"model_name": "t", "num_classes": 2},
        echo=said.append)
    times = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    times = [x for x in times if x["split"] == "time"]
    assert [x["epoch"] for x in times] == [0, 1]
    for t in times:
        assert t["images"] == len(blobs.train)
        phases = [t[f"{k}_s"] for k in PHASES]
        assert all(v >= 0 for v in phases) and t["other_s"] >= 0
        assert sum(phases) <= t["wall_s"] + 1e-5  # each rounded to 1 us
        assert t["checkpoint_s"] > 0 and t["validation_s"] > 0 and t["train_steps_s"] > 0
        assert 0 <= t["data_wait_share"] <= 1
        assert t["images_per_s"] == pytest.approx(t["images"] / (t["train_steps_s"] + t["data_wait_s"]), rel=0.01)
    assert len(said) == 2 and all(" img/s  data wait " in line for line in said)
    assert f"{times[0]['wall_s']:.1f} s" in said[0]


def test_a_failing_background_write_raises_the_writes_error_and_keeps_the_last_checkpoint(
    blobs, tmp_path, monkeypatch
):
    from groupdistil.training import async_save

    obj = _objective("erm", blobs)
    writes = []

    def failing_save(path, payload):
        writes.append((path.name, payload["epoch"]))
        if payload["epoch"] == 1 and path.name == "last.pt":
            raise OSError(28, "No space left on device")
        real_save(path, payload)

    real_save = async_save.save_checkpoint
    monkeypatch.setattr(async_save, "save_checkpoint", failing_save)
    with pytest.raises(OSError, match="No space left"):
        fit(_net(), obj, blobs, train=TrainConfig(epochs=3, batch_size=32), optim=OptimConfig(lr=0.1),
            out=tmp_path, meta={"model_name": "t", "num_classes": 2}, quiet=True)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 0  # the last good one, whole
    # The error surfaced at the next wait (epoch 2's save), before epoch 2's write started.
    assert ("last.pt", 2) not in writes and ("last.pt", 1) in writes


def test_the_checkpoint_snapshot_shares_no_storage_with_the_training_state():
    from groupdistil.training.async_save import cpu_snapshot

    w = torch.ones(3)
    state = {"model": {"w": w}, "opt": {"state": {0: {"m": w * 2}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    snap = cpu_snapshot(state)
    w.add_(1)
    state["opt"]["param_groups"][0]["lr"] = 9.0
    assert torch.equal(snap["model"]["w"], torch.ones(3)) and snap["opt"]["param_groups"][0]["lr"] == 0.1


def test_the_splits_evaluated_through_one_loader_equal_each_evaluated_alone(blobs, monkeypatch):
    model = _net(3)
    # train and test read by index, as from files; val in memory (a sliced pass, no loader)
    parts = {name: GroupedDataset(d.y, d.g, loader=d.inputs.__getitem__) if name != "val" else d
             for name, d in blobs.splits.items()}
    counts = blobs.group_counts("train")
    together = evaluate_splits(model, parts, blobs.grouping, train_group_counts=counts, batch_size=64)
    alone = {name: evaluate(model, d, blobs.grouping, train_group_counts=counts, batch_size=64)
             for name, d in parts.items()}
    assert together == alone
    assert together["train"] != together["val"]  # each split got its own metrics
    assert model.training  # the model's mode is given back
    # A split whose batches are held (fit's validation) is evaluated from them, not read again.
    val = HeldPasses(eval_loader(blobs.val, 64), max_bytes=1 << 20)
    list(val)
    read = []
    real = evaluation.splits_loader
    monkeypatch.setattr(evaluation, "splits_loader", lambda ds, *a, **kw: read.append(ds) or real(ds, *a, **kw))
    with_held = evaluate_splits(model, parts, blobs.grouping, train_group_counts=counts, batch_size=64,
                                held={"val": val, "other": []})
    assert with_held == alone
    assert read == [[parts["train"], parts["test"]]]
    # A split in memory as it is goes through no loader either.
    assert evaluate_splits(model, {"val": blobs.val}, blobs.grouping, train_group_counts=counts) == {
        "val": alone["val"]}
    assert len(read) == 1


def test_trainer_epoch_without_a_loader_resolves_the_default_workers():
    """Trainer.train_epoch builds its own loader when none is given; TrainConfig's num_workers default
    (None: the machine's) must be resolved first, not handed to the DataLoader."""
    from groupdistil.checkpoint import FitState
    from groupdistil.data import DataConfig, load_dataset
    from groupdistil.training.trainer import Trainer

    bundle = load_dataset(DataConfig(dataset="spurious-digits"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(bundle.splits["train"][0][0].numel(), bundle.n_classes))
    objective = build_objective("erm", n_groups=bundle.grouping.n_groups, n_classes=bundle.n_classes)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(net, objective, torch.optim.SGD(net.parameters(), lr=0.1), scaler, train=TrainConfig(),
                      device=torch.device("cpu"), state=FitState())
    assert TrainConfig().num_workers is None
    metrics = trainer.train_epoch(bundle, 0)
    assert trainer.state.step == -(-len(bundle.splits["train"]) // TrainConfig().batch_size)
    assert 0 <= metrics["avg_acc"] <= 1


def test_a_new_run_begins_its_first_pass_before_the_optimiser_and_a_resumed_one_after(blobs, tmp_path, monkeypatch):
    events = []
    real_optimizer, real_started = engine.make_optimizer, engine.Started

    class Recorded(real_started):
        def __init__(self, loader):
            events.append("pass begun")
            super().__init__(loader)

    def optimizer(*args, **kwargs):
        events.append("optimiser")
        return real_optimizer(*args, **kwargs)

    monkeypatch.setattr(engine, "Started", Recorded)
    monkeypatch.setattr(engine, "make_optimizer", optimizer)
    cfg = TrainConfig(epochs=2, batch_size=32)
    meta = {"model_name": "t", "num_classes": 2}
    fit(_net(), _objective("erm", blobs), blobs, train=cfg, optim=OptimConfig(lr=0.1), out=tmp_path, meta=meta,
        quiet=True)
    assert events == ["pass begun", "optimiser"]
    events.clear()
    fit(_net(), _objective("erm", blobs), blobs, train=TrainConfig(epochs=3, batch_size=32), optim=OptimConfig(lr=0.1),
        out=tmp_path, meta=meta, quiet=True, resume=True)
    assert events == ["optimiser"]  # where it continues comes from last.pt, read with the optimiser
