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


def _module_name(path: Path) -> str:
    parts = ("groupdistil", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the groupdistil modules it imports, at the top or inside a function (a deferred import
    hides a cycle from the interpreter, not from the design). ``from groupdistil.x import y`` counts as
    an import of ``groupdistil.x.y`` when that is a module, else of ``groupdistil.x``."""
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "groupdistil":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in paths else node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in paths}
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        stack = [(start, iter(sorted(graph[start])))]
        on_path = {start}
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(path.pop())
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child):], child]
            elif child not in done and child in graph:
                stack.append((child, iter(sorted(graph[child]))))
                on_path.add(child)
                path.append(child)
    return None


def test_the_import_graph_has_no_cycle():
    # Layers say which way imports may point between folders; within a layer (checkpoint.py and
    # models/, say) this says they point one way only.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = _import_graph()
    assert "groupdistil.checkpoint" in graph["groupdistil.models"]  # the graph sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
