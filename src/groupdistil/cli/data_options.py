"""The dataset flags, shared by every command that reads data, and the DataConfig they build.

Each flag is a typer ``Annotated`` alias whose parameter name is the :class:`DataConfig` field it
sets; every default is None, meaning "not given", so flags can override a config file.

The short way, for a command that only needs the dataset: decorate it with :func:`data_options` and
take a ``data: DataConfig`` parameter; the decorator replaces it by all the flags below::

    from groupdistil.cli.data_options import data_options
    from groupdistil.data import DataConfig, load_dataset

    @app.command("train")
    @data_options
    def train_command(data: DataConfig, epochs: int = 10) -> None:
        bundle = load_dataset(data)

A command that also reads a config file needs the flags that were given, to lay them over the
file's ``data`` section: declare the flags with the aliases (all of them are listed in
:data:`DATA_OPTIONS`) and call :func:`data_config` with a base::

    @app.command("distill")
    def distill_command(config: Path, dataset: DatasetOpt = None, root: RootOpt = None) -> None:
        data = data_config({"dataset": dataset, "root": root}, base=load_config(config).data)

``@data_options(base=...)`` is not offered: the base usually depends on another flag (the config
path), so the merge belongs in the command body.

Bad values (``--imbalance-ratio 0.5``, ``--task foo``) raise :class:`ConfigError` naming the flag.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from groupdistil.data.options import DataConfig
from groupdistil.errors import ConfigError

PANEL = "Dataset options"


def _flag(kind: type, names: str, help: str) -> Any:
    """``Annotated[kind | None, typer.Option(...)]``: None means the flag was not given."""
    return Annotated[kind | None, typer.Option(names, help=help, rich_help_panel=PANEL)]


DatasetOpt = _flag(str, "--dataset", "dataset name (see `groupdistil datasets`)")
RootOpt = _flag(Path, "--root", "local copy of the data; manifest: the manifest file")
DataSeedOpt = _flag(int, "--data-seed", "seed of the built-in benchmarks and of derived splits")
GroupByOpt = _flag(str, "--group-by", "manifest: attribute columns a,b forming groups")
GroupWithLabelOpt = _flag(
    bool, "--group-with-label/--no-group-with-label", "manifest --group-by: g = y * n_attr + a (default)"
)
FeaturesOpt = _flag(str, "--features", "manifest: numeric feature columns a,b")
TargetAttrOpt = _flag(str, "--target-attr", "celeba: target attribute (default Blond_Hair)")
ConfounderAttrOpt = _flag(str, "--confounder-attr", "celeba: confounder attribute (default Male)")
ImbalanceRatioOpt = _flag(float, "--imbalance-ratio", "cifar10-lt, cifar100-lt: n_max / n_min (default 100)")
TaskOpt = _flag(str, "--task", "mnms: pathology or phase")
GroupAttrOpt = _flag(str, "--group-attr", "mnms: vendor (default) or centre")
SlicesOpt = _flag(str, "--slices", "mnms: central (default) or all")
ImageSizeOpt = _flag(int, "--image-size", "image datasets: side length after resize and crop")
AugmentOpt = _flag(bool, "--augment/--no-augment", "random crop (and flip) on the training split")
AllowOutsideRootOpt = _flag(
    bool, "--allow-outside-root/--no-allow-outside-root", "image paths may leave the data folder"
)

#: DataConfig field -> its flag's annotated type, in the order ``--help`` shows them.
DATA_OPTIONS: dict[str, Any] = {
    "dataset": DatasetOpt,
    "root": RootOpt,
    "data_seed": DataSeedOpt,
    "group_by": GroupByOpt,
    "group_with_label": GroupWithLabelOpt,
    "features": FeaturesOpt,
    "target_attr": TargetAttrOpt,
    "confounder_attr": ConfounderAttrOpt,
    "imbalance_ratio": ImbalanceRatioOpt,
    "task": TaskOpt,
    "group_attr": GroupAttrOpt,
    "slices": SlicesOpt,
    "image_size": ImageSizeOpt,
    "augment": AugmentOpt,
    "allow_outside_root": AllowOutsideRootOpt,
}
_LISTS = ("group_by", "features")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def data_config(options: Mapping[str, Any], base: DataConfig | None = None) -> DataConfig:
    """A DataConfig from flag values (None = not given) over ``base`` (defaults when None).

    ``--group-by a,b`` and ``--features a,b`` become lists; validation errors name the flag.
    """
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(DATA_OPTIONS))
    if unknown:
        raise ConfigError(f"data options: unknown {unknown[0]!r}; expected one of {', '.join(DATA_OPTIONS)}")
    for key in _LISTS:
        if isinstance(given.get(key), str):
            given[key] = [part.strip() for part in given[key].split(",") if part.strip()]
    values = {**(base.model_dump() if base is not None else {}), **given}
    try:
        return DataConfig.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "data"
        raise ConfigError(f"{flag(field)}: {err['msg']} (got {err.get('input')!r})") from None


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command every dataset flag in place of its ``data: DataConfig`` parameter."""
    sig = inspect.signature(func)
    if "data" not in sig.parameters:
        raise TypeError(f"{func.__name__}: @data_options needs a parameter named 'data'")
    hints = typing.get_type_hints(func, include_extras=True)
    flags = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in DATA_OPTIONS.items()
    ]
    others = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    others = [p for p in others if p.name != "data"]
    clash = {p.name for p in others} & set(DATA_OPTIONS)
    if clash:
        raise TypeError(f"{func.__name__}: parameters {sorted(clash)} clash with the dataset flags")

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        data = data_config({name: kwargs.pop(name) for name in DATA_OPTIONS})
        return func(data=data, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in others] + flags
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}
    del wrapper.__wrapped__  # typer must see the new signature, not the original one
    return wrapper
