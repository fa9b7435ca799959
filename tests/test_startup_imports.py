"""The app's cold start stays light (issue 17; ``bench/startup.py`` measures it).

What the Home path imports (app.py, pages/ui.py, pages/home.py and the modules they pull in) and what
rendering Home imports load none of :data:`HEAVY`: the pages that train, score or track import those
when they are opened. A subprocess records the first import of each heavy package with the stack that
made it, so an ``import torch`` added at the top of pages/home.py, pages/ui.py or a core module on
that path fails here naming the line. ``import core`` itself loads no third-party package.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Packages Home does not show: torch (about 2 s to import), mlflow (about 5 s), and the scientific
# stacks only the quality, classify and import pages use.
HEAVY = ("torch", "torchvision", "mlflow", "scipy", "skimage", "sklearn", "monai", "cv2", "pydicom")
HOME_PATH = ("app.py", "pages/ui.py", "pages/home.py")

# Installed first in the subprocess: records who first imports a heavy package, then lets the import go
# on (or, with REFUSE, refuses it as a missing package would be).
RECORDER = """
import json, sys, traceback
HEAVY, REFUSE = {heavy!r}, {refuse!r}
first = {{}}

class Record:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HEAVY:
            if top not in first:
                stack = [f for f in traceback.format_stack()[:-1] if "importlib._bootstrap" not in f]
                first[top] = "".join(stack[-6:])
            if REFUSE:
                raise ImportError(f"refused: {{name}}")
        return None

sys.meta_path.insert(0, Record())
"""


def module_level_imports(path: Path) -> list[str]:
    """The modules a file imports when it runs as a script: its import statements outside functions
    and classes (inside ``if``/``try`` blocks too, e.g. app.py's ``__main__`` guard)."""
    found = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return list(dict.fromkeys(found))


def run_recorded(code: str, env: dict[str, str] | None = None, refuse: bool = False) -> dict[str, str]:
    """Run ``code`` after the recorder in a fresh interpreter (the test's environment plus ``env``);
    {heavy package: the stack that imported it first}."""
    recorder = RECORDER.format(heavy=HEAVY, refuse=refuse)
    out = subprocess.run([sys.executable, "-c", recorder + code + "\nprint(json.dumps(first))"], cwd=ROOT,
                         capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def explain(first: dict[str, str]) -> str:
    return "\n".join(f"--- {name} first imported by:\n{stack}" for name, stack in first.items())


def test_module_level_imports_sees_guarded_and_nested_blocks(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nif __name__ == '__main__':\n    from pages import ui\n"
                      "try:\n    import torch\nexcept ImportError:\n    import json\n"
                      "def f():\n    import mlflow\nfrom . import sibling\n")
    assert module_level_imports(sample) == ["os", "pages", "torch", "json"]


def test_home_path_imports_no_heavy_package():
    named = {f: module_level_imports(ROOT / f) for f in HOME_PATH}
    direct = [f"{f} imports {m}" for f, mods in named.items() for m in mods if m.split(".")[0] in HEAVY]
    assert direct == [], "move these imports into the functions that need them:\n" + "\n".join(direct)
    mods = list(dict.fromkeys(m for f in HOME_PATH for m in named[f]))
    assert {"streamlit", "pages", "core.charts", "core.data.datasets"} <= set(mods)
    code = f"for m in {mods!r}:\n    __import__(m)\nimport pages.ui, core.charts, core.data.datasets\n"
    first = run_recorded(code)
    assert first == {}, "the Home path imports heavy packages at module level:\n" + explain(first)


def test_a_torch_import_on_the_home_path_is_caught(tmp_path):
    """The check above fails for an ``import torch`` at the top of a page (here a copy of Home)."""
    page = tmp_path / "home.py"
    page.write_text("import torch\n" + (ROOT / "pages" / "home.py").read_text())
    mods = module_level_imports(page)
    assert mods[0] == "torch"
    code = f"for m in {mods!r}:\n    try:\n        __import__(m)\n    except ImportError:\n        pass\n"
    first = run_recorded(code, refuse=True)   # refused: the check needs the record, not torch itself
    assert "torch" in first and "<string>" in first["torch"]


def test_rendering_home_imports_no_heavy_package(small_phantom):
    """The Home page as the first request renders it (app.py's navigation, the sidebar, the chart):
    the imports inside the functions it calls count too."""
    code = f"""
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=60).run()
assert not at.exception, at.exception
assert at.title[0].value == "MedAug Studio" and "imbalance ratio" in at.get("html")[0].proto.body
"""
    first = run_recorded(code, env={"MEDAUG_DATASET": str(small_phantom.root)})   # workspace: conftest's
    assert first == {}, "rendering Home imports heavy packages:\n" + explain(first)


def test_import_core_loads_no_third_party_package():
    code = """
import sys
before = set(sys.modules)
import core
new = sorted({m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {"core"})
print(new)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
