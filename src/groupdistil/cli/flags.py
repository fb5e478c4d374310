"""Command-line flags generated from the config schema.

Every leaf of :class:`groupdistil.config.RunConfig` becomes one flag (``--`` + the field name with
dashes, or the names in the field's ``json_schema_extra["flag"]``). A flag left out keeps the config's
value; a given flag overrides it. Because flags are generated, a config key without a flag (or the
reverse) cannot exist.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic.fields import FieldInfo

from groupdistil.config import flag_names, leaf_fields

#: Options of commands that are not config keys, as the library names them (``sweep``'s grid and seeds,
#: ``--set key=value``).
COMMAND_OPTIONS = {"grid": "--grid", "seeds": "--seeds", "set": "--set"}
_NAMED = re.compile(r"`([a-z][a-z0-9_.]*)`")


def flag_of(key: str) -> str | None:
    """The command-line flag of a config key (its first name) or of a command option; None for others."""
    for k, field in leaf_fields():
        if k == key:
            return flag_names(k, field)[0]
    return COMMAND_OPTIONS.get(key)


def cli_text(message: str) -> str:
    """A library message as the command line shows it.

    The library names options by their config key in backticks (``train.device``, the name a Python
    caller knows); on the command line each becomes its flag (``--device``). This is the one place
    that maps the two; backticked text that is no option's name stays as it is.
    """
    return _NAMED.sub(lambda m: flag_of(m.group(1)) or m.group(0), message)


def _base_type(annotation: Any) -> tuple[Any, str]:
    """(python type for the CLI parser, a note on accepted values) for a field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _base_type(args[0])
    if origin is Literal:
        return str, "one of: " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin is list:
        return str, "comma separated"
    if annotation in (bool, int, float, str, Path):
        return annotation, ""
    return str, ""


def _param(key: str, field: FieldInfo) -> inspect.Parameter:
    base, note = _base_type(field.annotation)
    names = flag_names(key, field)
    help_text = cli_text(field.description or "") + (f" ({note})" if note else "") + f" [config: {key}]"
    # Booleans get a --no- form so a flag can switch a config's True off.
    decls = [f"{n}/--no-{n[2:]}" for n in names[:1]] + names[1:] if base is bool else names
    option = typer.Option(*decls, help=help_text, show_default=False)
    return inspect.Parameter(
        key.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY,
        default=None, annotation=Annotated[Optional[base], option],  # noqa: UP045 (typer needs Optional)
    )


def config_parameters(
    sections: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> list[inspect.Parameter]:
    """One parameter per config leaf (optionally only under ``sections``, e.g. ``["data"]``)."""
    wanted = tuple(f"{s}." for s in sections) if sections is not None else None
    skipped = set(skip)
    return [
        _param(key, field) for key, field in leaf_fields()
        if (wanted is None or key.startswith(wanted)) and key not in skipped
    ]


def overrides_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Nested config overrides from the generated parameters that were given (not None)."""
    types_by_key = dict(leaf_fields())
    out: dict[str, Any] = {}
    for pname, value in kwargs.items():
        key = pname.replace("__", ".")
        if value is None or key not in types_by_key:
            continue
        if typing.get_origin(_strip_optional(types_by_key[key].annotation)) is list:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def command_with_flags(
    body: Callable[..., Any], extra: list[inspect.Parameter], flags: list[inspect.Parameter], doc: str
) -> Callable[..., Any]:
    """A function typer can register: its signature is ``extra`` + ``flags``; it calls
    ``body(overrides, **extra_values)``."""
    flag_names_ = {p.name for p in flags}

    def command(**kwargs: Any) -> Any:
        given = {k: v for k, v in kwargs.items() if k in flag_names_}
        rest = {k: v for k, v in kwargs.items() if k not in flag_names_}
        return body(overrides_from(given), **rest)

    params = extra + flags
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = body.__name__
    return command


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (nested dicts merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
