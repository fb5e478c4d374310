"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    weights = [float(v) for v in re.search(r"group weights q: \[(.*?)\]", out).group(1).split(",")]
    assert abs(sum(weights) - 1) < 5e-3 and len(weights) == 4  # printed rounded to 3 places
