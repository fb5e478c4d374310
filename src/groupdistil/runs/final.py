"""``final.json``: the typed record of a finished run, the one description that the runner writes
through and that ``report``, ``sweep`` and a resumed run read back through.

Every field is checked with a message of the form ``<key>: expected <what>, got <value>``; the
readers prefix the file, so a damaged or hand-edited final.json is one line naming file and key.
Fields that older versions did not write (``val_groups``, ``train_groups``, ``skipped_steps``, ``time``...)
may be absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from groupdistil.errors import UserError

#: The roles a run can have.
ROLES = ("teacher", "student")


def _short(value: Any) -> Any:
    """``value`` for a message: a huge integer by its digit count, not its 400 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"  # json.loads stops at 4300 digits
    return value


def _fail(expected: str, got: Any) -> NoReturn:
    raise PydanticCustomError("expected", "expected {expected}, got {got}",
                              {"expected": expected, "got": repr(_short(got))})


def _check(test: Callable[[Any], bool], expected: str, optional: bool = False) -> BeforeValidator:
    """A validator that lets ``value`` through unchanged when ``test`` holds (or it is None and
    ``optional``) and otherwise fails with ``expected <expected>, got <value>``."""

    def check(value: Any) -> Any:
        if (optional and value is None) or test(value):
            return value
        _fail(expected, value)

    return BeforeValidator(check)


def _is(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind) and not isinstance(value, bool)


def _is_int64(value: Any) -> bool:
    # Bounded: a count of 10**400 is a valid JSON integer that no float (or int64) holds.
    return _is(int)(value) and -(2**63) <= value < 2**63


def _is_fraction(value: Any) -> bool:
    # Compared before any float conversion: math.isfinite(10**400) raises OverflowError.
    return _is((int, float))(value) and 0 <= value <= 1


def _required() -> Any:
    """A required field whose absence is reported like a wrong value (``expected ..., got None``)."""
    return Field(default=None, validate_default=True)


Fraction = Annotated[float | None, _check(_is_fraction, "a number in [0, 1] or null", optional=True)]
Int64 = Annotated[int, _check(_is_int64, "an integer (64-bit)")]
Text = Annotated[str, _check(_is(str), "a string")]
OptionalText = Annotated[str | None, _check(_is(str), "a string or null", optional=True)]


class Reliability(BaseModel):
    """The reliability diagram: per confidence bin, mean confidence, accuracy and sample count."""

    confidence: Annotated[list[Fraction], _check(_is(list), "a list")] = _required()
    accuracy: Annotated[list[Fraction], _check(_is(list), "a list")] = _required()
    count: Annotated[list[Int64], _check(_is(list), "a list")] = _required()

    @model_validator(mode="after")
    def _equal_lengths(self) -> Reliability:
        lengths = [len(self.confidence), len(self.accuracy), len(self.count)]
        if len(set(lengths)) != 1:
            _fail("confidence, accuracy and count of equal length", lengths)
        return self


def _named(what: str, optional: bool = False) -> BeforeValidator:
    return _check(_is(dict), f"an object {{name: {what}}}", optional)


class SplitRecord(BaseModel):
    """The metrics of one split (more keys than these, e.g. ``n`` and ``loss``, are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    avg_acc: Fraction = None
    worst_group_acc: Fraction = None
    balanced_acc: Fraction = None
    adjusted_avg_acc: Fraction = None
    worst_class_acc: Fraction = None
    group_acc: Annotated[dict[str, Fraction], _named("accuracy")] = _required()
    class_acc: Annotated[dict[str, Fraction], _named("accuracy")] = _required()
    group_ece: Annotated[dict[str, Fraction] | None, _named("ECE", optional=True)] = None
    class_ece: Annotated[dict[str, Fraction] | None, _named("ECE", optional=True)] = None
    ece: Fraction = None
    reliability: Annotated[Reliability | None, _check(_is(dict), "an object", optional=True)] = None


Split = Annotated[SplitRecord, _check(_is(dict), "an object of metrics")]


class Splits(BaseModel):
    """The evaluated splits: ``test`` always (what reports show), ``train`` and ``val`` as written."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Split]

    test: Split = _required()


def _is_seconds(value: Any) -> bool:
    # Bounded and compared before any float conversion (10**400 is valid JSON): at most ~30 years.
    return _is((int, float))(value) and 0 <= value <= 1e9


Seconds = Annotated[float | None, _check(_is_seconds, "a number of seconds in [0, 1e9] or null", optional=True)]
Rate = Annotated[float | None, _check(lambda v: _is((int, float))(v) and 0 <= v <= 1e12,
                                      "a rate in [0, 1e12] or null", optional=True)]


class TimeRecord(BaseModel):
    """Where the run's time went before and around training (training/timing.py ``RunClock``): all in
    seconds of wall time, and the teacher pass's images per second (null where nothing was computed)."""

    model_config = ConfigDict(extra="allow")

    wall_s: Annotated[float, _check(_is_seconds, "a number of seconds in [0, 1e9]")] = _required()
    data_index_s: Seconds = None
    model_build_s: Seconds = None
    teacher_s: Seconds = None
    teacher_pass_s: Seconds = None
    teacher_images_per_s: Rate = None
    first_batch_s: Seconds = None
    fit_s: Seconds = None


class FinalRecord(BaseModel):
    """final.json: what the run was and its selected checkpoint's metrics per split."""

    model_config = ConfigDict(extra="allow")

    name: Text = _required()
    method: Text = _required()
    role: Annotated[str, _check(lambda v: v in ROLES, f"one of {', '.join(ROLES)}")] = _required()
    dataset: Text = _required()
    seed: Int64 = _required()
    model: OptionalText = None
    teacher: OptionalText = None
    options: Annotated[dict[str, Any] | None, _check(_is(dict), "an object", optional=True)] = None
    selected_epoch: Annotated[Int64 | None, _check(_is_int64, "an integer (64-bit)", optional=True)] = None
    selection_metric: OptionalText = None
    skipped_steps: Int64 = 0
    train_groups: Annotated[dict[str, Any] | None, _check(_is(dict), "an object or null", optional=True)] = None
    val_groups: Text = "labels"
    splits: Annotated[Splits, _check(_is(dict), "an object with a 'test' split")] = _required()
    time: Annotated[TimeRecord | None, _check(_is(dict), "an object or null", optional=True)] = None


def check_final(data: Any, path: Path | str) -> FinalRecord:
    """``data`` (parsed final.json) as a :class:`FinalRecord`; one UserError line naming the file, the
    first wrong key and what it expected."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level: expected an object, got {type(data).__name__}")
    try:
        return FinalRecord.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        raise UserError(f"{path}: {where or 'the top level'}: {first['msg']}") from None


def read_final(path: Path) -> tuple[FinalRecord, dict[str, Any]]:
    """final.json as checked and as written (the dict keeps every key and value exactly).

    Raises:
        UserError: the file is missing, not JSON or not a final.json (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, or an integer of over 4300 digits
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return check_final(data, path), data
