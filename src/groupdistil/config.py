"""The experiment configuration: one pydantic schema for the YAML file and the command line.

Every leaf field is also a command-line flag (``--`` + the field name with dashes, or the name given
in ``json_schema_extra={"flag": ...}``), generated from this schema by :mod:`groupdistil.cli.flags`,
so a config key and its flag can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from groupdistil.data.options import DataConfig
from groupdistil.errors import ConfigError

#: Every section refuses inf and NaN for any float option (pydantic's allow_inf_nan): a learning rate
#: of inf would otherwise pass ``gt=0`` and fail at the second step after writing a run folder.
FINITE = ConfigDict(extra="forbid", allow_inf_nan=False)
#: Bounds of the integer options: far beyond any real use, small enough that the number fits the
#: int64 tensors and seeds it ends up in (``--seed 10**30`` would fail deep inside torch).
MAX_SEED = 2**32 - 1
MAX_BATCH = 1 << 20
MAX_COUNT = 10**6


def _flag(name: str, *aliases: str) -> dict[str, Any]:
    return {"flag": [name, *aliases]}


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    name: str = Field("cnn-small", description="model name (see create_model)",
                      json_schema_extra=_flag("--model", "--student"))
    weights: Path | None = Field(None, description="initial weights of this whole model from a local file")
    pretrained: Path | None = Field(
        None, description="fine-tune from a local torchvision/timm-style .pth/.pt/.safetensors file: every "
        "tensor but the final linear layer must fit (docs/models.md)")
    pretrained_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the --pretrained file: recorded by the run, "
        "checked when given")


class TeacherConfig(BaseModel):
    model_config = FINITE

    checkpoints: list[Path] = Field(default_factory=list, description="teacher checkpoint(s)",
                                    json_schema_extra=_flag("--teacher"))
    combine: Literal["mean", "agre-kd"] = Field("mean", description="how an ensemble is combined",
                                                json_schema_extra=_flag("--teacher-combine"))
    reference: Path | None = Field(None, description="AGRE-KD: biased reference model checkpoint",
                                   json_schema_extra=_flag("--teacher-reference"))
    adjust: Literal["none", "balanced", "weighted"] = Field(
        "none", description="post-hoc teacher logit adjustment: t - tau log pi, or t - log(lambda/pi)",
        json_schema_extra=_flag("--teacher-adjust"))
    adjust_tau: float = Field(1.0, description="tau of the balanced adjustment",
                              json_schema_extra=_flag("--teacher-tau"))
    calibrate: Literal["none", "undo-adjust", "temperature", "vector"] = Field(
        "none", description="recalibrate the teacher: undo its training-time logit adjustment (recorded in "
        "the checkpoint), or temperature / vector scaling fitted on the validation split by NLL",
        json_schema_extra=_flag("--teacher-calibrate"))
    cache: bool = Field(True, description="cache teacher logits when the training view is not augmented",
                        json_schema_extra=_flag("--teacher-cache"))
    cache_dir: Path | None = Field(None, description="teacher-logit cache folder "
                                   "(default $GROUPDISTIL_CACHE or ~/.cache/groupdistil)",
                                   json_schema_extra=_flag("--teacher-cache-dir"))


class ObjectiveConfig(BaseModel):
    """The objective and its options; an option left unset takes the objective's default."""

    model_config = FINITE

    method: str = Field("erm", description="objective: erm, reweight, jtt, group-dro, balanced, robust-teacher, "
                        "kd, dkd, ltkd, kd-reweight, groupdistil, class-robust-kd")
    alpha: float | None = Field(None, ge=0, le=1, description="teacher weight in [0, 1]")
    temperature: float | None = Field(None, gt=0, description="distillation temperature T")
    step_size: float | None = Field(None, ge=0, description="EG step size eta of q or lambda")
    adjustment: float | None = Field(None, ge=0, description="group DRO generalisation adjustment C")
    normalize_loss: bool | None = Field(None, description="normalise adjusted group losses before the update")
    dro_on: Literal["both", "kd", "ce"] | None = Field(None, description="groupdistil: what q weights")
    mode: Literal["standard", "balanced", "robust", "tradeoff"] | None = Field(
        None, description="class-robust-kd student objective")
    beta: float | None = Field(None, ge=0, le=1, description="class-robust-kd tradeoff beta")
    tau: float | None = Field(None, description="balanced / robust-teacher logit adjustment tau")
    lambda_source: Literal["train", "val"] | None = Field(None, description="class-robust-kd lambda from")
    validation_every: int | None = Field(None, ge=1, le=10**9, description="K: validation-driven lambda every K steps")
    upweight: float | None = Field(None, ge=1, le=1e6, description="jtt: weight of the error set (lambda_up)")
    kd_term: Literal["kd", "dkd", "ltkd"] | None = Field(
        None, description="groupdistil / class-robust-kd: the distillation term the aggregation acts on")
    dkd_alpha: float | None = Field(None, ge=0, description="DKD: weight of the target-class term (default 1)")
    dkd_beta: float | None = Field(None, ge=0, description="DKD: weight of the non-target term (default 8)")
    dkd_warmup: int | None = Field(None, ge=0, le=MAX_COUNT,
                                   description="DKD: epochs of the linear warm-up of its weight (default 20; 0: none)")
    ltkd_alpha: float | None = Field(None, ge=0, description="LTKD: weight of the cross-group term (default 1)")
    ltkd_beta: float | None = Field(None, ge=0, description="LTKD: weight of the mean within-group term "
                                    "(default K, the number of class groups)")

    def options(self) -> dict[str, Any]:
        """The options the user set (not None), without the method name."""
        return {k: v for k, v in self.model_dump(exclude={"method"}).items() if v is not None}


class OptimConfig(BaseModel):
    model_config = FINITE

    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="optimiser")
    lr: float = Field(0.05, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="learning-rate schedule")
    lr_step: int = Field(30, ge=1, le=MAX_COUNT, description="step schedule: epochs between decays")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: decay factor")
    head_lr: float | None = Field(None, gt=0, description="learning rate of the final linear layer "
                                  "(default: --lr)")


#: The device names a run accepts; :func:`groupdistil.training.devices.check_device` checks the same.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class TrainConfig(BaseModel):
    model_config = FINITE

    epochs: int = Field(10, ge=1, le=MAX_COUNT, description="epochs")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="batch size per process")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="training seed (initialisation, order, augmentation)")
    sampler: Literal["shuffle", "group-balanced"] = Field("shuffle", description="training sampler")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="mixed precision: bf16, or fp16 with a grad scaler (CUDA; CPU too, slowly)")
    compile: bool = Field(False, description="torch.compile the student")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:N")
    num_workers: int | None = Field(None, ge=0, le=1024, description="data-loader workers (default: the machine's "
                                    "cores for image files, shared by the local ranks; 0 for in-memory data)")
    hold_decoded_gb: float = Field(
        1.0, ge=0, le=1 << 20, description="GiB of decoded inputs held in memory per split and process, so "
        "that images read from files are decoded once: the training split (without random augmentation, in "
        "one process) and the validation split (0: decode at every pass)")
    freeze: Literal["none", "backbone"] = Field(
        "none", description="backbone: train the final linear layer only (a linear probe; frozen BatchNorm "
        "stays in eval mode)")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads of torch's kernels "
                                "(default: torch's choice, one per core; 1 on a busy shared machine)")
    select_on: Literal["worst_group_acc", "avg_acc", "balanced_acc", "worst_class_acc"] = Field(
        "worst_group_acc", description="validation metric for model selection")
    skip_nonfinite: bool = Field(False, description="skip steps with a non-finite loss instead of stopping")
    checkpoint_every: float | None = Field(
        None, gt=0, le=MAX_COUNT, description="minutes between checkpoints within an epoch (resumable where "
        "they were written; default: at each epoch's end only)")
    channels_last: bool = Field(False, description="channels_last (NHWC) memory format for conv models")
    deterministic: bool = Field(
        True, description="deterministic kernels, so that a re-run is bit for bit the same (on CUDA cuDNN and "
        "cuBLAS keep to deterministic algorithms, which may cost speed; free on CPUs)")
    sync_batchnorm: bool = Field(
        True, description="under torchrun, BatchNorm uses the global batch's statistics (exact; costs "
        "two all-reduces per BatchNorm layer and step)")


class RunConfig(BaseModel):
    """One experiment: data, student (or teacher) model, optional teacher, objective, training."""

    model_config = FINITE

    name: str | None = Field(None, description="label of the run (default: the method)")
    role: Literal["teacher", "student"] = Field("student", description="recorded in the outputs")
    out: Path = Field(Path("runs/run"), description="output folder")
    force: bool = Field(False, description="overwrite a finished run's folder")
    resume: bool = Field(False, description="continue from out/checkpoints/last.pt")
    quiet: bool = Field(False, description="no progress bars or per-epoch lines")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def label(self) -> str:
        return self.name or self.objective.method


def leaf_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, pydantic FieldInfo) for every leaf of the schema, in declaration order."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaf_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def flag_names(key: str, field: Any) -> list[str]:
    """The command-line flag(s) of a config leaf: ``json_schema_extra["flag"]`` or ``--`` + the name."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    names = extra.get("flag")
    return list(names) if names else ["--" + key.rsplit(".", 1)[-1].replace("_", "-")]


def _one_line(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    field = dict(leaf_fields()).get(key)
    where = f"{key} ({flag_names(key, field)[0]})" if field is not None else key
    return f"{source}: {where}: {err['msg']} (got {got_s})"


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a plain dict; any problem is one ConfigError line naming the key."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


#: Bounds on a YAML document (a config, a --set or --grid value). Configs are a few hundred bytes; the
#: bounds stop an alias bomb (nine levels of nine aliases: 9**9 nodes) or 50,000 nested brackets
#: (a RecursionError in PyYAML's composer) before anything is built.
MAX_YAML_CHARS = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse a document over the bounds, from PyYAML's event stream (iterative, so no recursion).

    Counts every node as it would be after alias expansion: an anchored node's expanded size is
    remembered and an alias adds it again.
    """
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{source}: {len(text)} characters; expected a YAML document of at most {MAX_YAML_CHARS}")
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = [[0, None]]  # per open collection: [expanded nodes so far, its anchor]
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, _OPEN):
            if len(stack) > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: line {event.start_mark.line + 1}: nested more than "
                                  f"{MAX_YAML_DEPTH} levels deep; expected a shallow mapping")
            stack.append([1, event.anchor])
            continue
        if isinstance(event, _CLOSE):
            n, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            n, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            n, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = n
        stack[-1][0] += n
        if stack[-1][0] > MAX_YAML_NODES:
            raise ConfigError(f"{source}: more than {MAX_YAML_NODES} values once aliases are expanded; "
                              "expected a plain configuration (an alias bomb?)")


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of a document within the size, depth and alias-expansion bounds.

    Raises:
        ConfigError: naming ``source``, for a document over the bounds.
        yaml.YAMLError: for text that is not YAML (callers word that message themselves).
    """
    _check_yaml_shape(text, source)
    try:
        return yaml.safe_load(text)
    except ValueError as e:
        # PyYAML's constructors raise plain ValueErrors: an integer of over 4300 digits (Python's
        # int-conversion limit), a date such as 2020-13-45.
        raise ConfigError(f"{source}: a value YAML cannot read ({e})") from None


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no Python objects are ever constructed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.stat().st_size > 4 * MAX_YAML_CHARS:  # not even read: a character is at most 4 bytes
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; expected a YAML document of at most "
                          f"{MAX_YAML_CHARS} characters")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return raw


def set_dotted(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``key.sub=value`` (value parsed as YAML, so 3, 0.5, true and [a, b] work)."""
    if "=" not in assignment:
        raise ConfigError(f"`set` {assignment}: expected key=value")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"`set` {assignment}: empty key")
    try:
        parsed = parse_yaml(value, f"--set {key}") if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`set` {assignment}: {p} is not a section")
        node = child
    node[parts[-1]] = parsed


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
