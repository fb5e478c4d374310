"""The code base's own rules that a reader can check mechanically: small functions."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "groupdistil"
MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def _flags() -> set[str]:
    from groupdistil.cli.flags import COMMAND_OPTIONS
    from groupdistil.config import flag_names, leaf_fields

    names = {n for key, field in leaf_fields() for n in flag_names(key, field)}
    return names | set(COMMAND_OPTIONS.values()) | {"--no-" + n[2:] for n in names}


def _message_strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_the_library_speaks_in_config_keys_not_flags():
    # A Python caller never passed a flag: what the library raises or says names the argument or the
    # config key; the command line alone turns keys into flags (cli/flags.py).
    flags = _flags()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            said = isinstance(node, ast.Raise) or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "echo"
            )
            if said:
                for text in _message_strings(node):
                    found += [f"{path.relative_to(SRC)}:{node.lineno} {f}" for f in flags if f in text.split()
                              or any(w.startswith(f + ":") or w.startswith(f + ")") for w in text.split())]
    assert not found, found


def test_the_command_line_shows_config_keys_as_flags():
    from groupdistil.cli.flags import cli_text

    assert cli_text("`train.device` cuda:99: this machine has 0 CUDA device(s)") == (
        "--device cuda:99: this machine has 0 CUDA device(s)"
    )
    assert cli_text("`model.name`: unknown; pass `force` or `grid`") == "--model: unknown; pass --force or --grid"
    assert cli_text("use `groupdistil distill` or `nothing.known`") == "use `groupdistil distill` or `nothing.known`"


#: Layers of the package, lowest first (docs/architecture.md): a module imports from its own layer
#: and those below. training/ and report/ are peers that do not import each other.
LAYERS = {"runs": 1, "training": 2, "report": 2, "app": 3, "cli": 4}


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).parts
        if rel == ("__main__.py",):
            continue  # the entry point runs the command line
        mine = LAYERS.get(rel[0], 0) if len(rel) > 1 else 0
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("groupdistil."):
                target = node.module.split(".")[1]
                peers = {rel[0], target} == {"training", "report"}
                if LAYERS.get(target, 0) > mine or peers:
                    wrong.append(f"{'/'.join(rel)}:{node.lineno} imports {node.module}")
    assert not wrong, wrong
