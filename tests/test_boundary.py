"""Architecture rules: core never imports streamlit; mlflow stays behind core.tracking (no other
module of core/, pages/ or app.py imports it, at module level or inside a function); core.gan and
core.classify import without mlflow or streamlit; the app's cold start (Home and Dataset) imports
neither torch nor mlflow."""
from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import core

ROOT = Path(__file__).resolve().parent.parent


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if m.name != "core.__main__")


def test_no_streamlit_import_statement_in_core():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+streamlit\b", p.read_text(), re.M)]
    assert offenders == []


def app_sources() -> list[Path]:
    """Every Python file of the app: core/, pages/ and app.py."""
    return sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"])


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (functions, classes, try blocks), and
    of ``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def test_imported_modules_sees_imports_at_any_depth(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n"
                      "def f():\n    from mlflow.entities import ViewType\n"
                      "class C:\n    def g(self):\n        import mlflow as m, json\n"
                      "try:\n    import importlib; importlib.import_module('mlflow.tracking')\n"
                      "except ImportError:\n    pass\n"
                      "from . import sibling\n")
    assert imported_modules(sample) == [(1, "os"), (3, "mlflow.entities"), (6, "json"), (6, "mlflow"), (8, "importlib"),
                                        (8, "mlflow.tracking")]


def test_only_core_tracking_imports_mlflow():
    files = app_sources()
    assert ROOT / "core" / "tracking.py" in files and ROOT / "core" / "runs.py" in files and ROOT / "app.py" in files
    assert any(p.parent.name == "pages" for p in files)
    offenders = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in files if p != ROOT / "core" / "tracking.py"
                 for line, mod in imported_modules(p) if mod == "mlflow" or mod.startswith("mlflow.")]
    assert offenders == [], "mlflow must be reached through core.tracking:\n" + "\n".join(offenders)
    assert any(mod.startswith("mlflow") for _, mod in imported_modules(ROOT / "core" / "tracking.py"))


def test_gan_and_classify_import_without_mlflow_or_streamlit():
    """A meta-path finder refuses mlflow and streamlit: every module of core.gan, core.diffusion and
    core.classify, and the generator interface, still imports (they reach tracking through callbacks,
    and the page through jobs)."""
    mods = [m for m in core_modules() if m.startswith(("core.gan", "core.diffusion", "core.classify",
                                                        "core.generators", "core.trainloop", "core.synthetic"))]
    assert {"core.gan.train", "core.gan.commands", "core.classify.train", "core.classify.commands",
            "core.diffusion.train", "core.diffusion.sample", "core.generators", "core.trainloop"} <= set(mods)
    code = f"""
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "streamlit"):
            raise ImportError(f"refused: {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
for m in {mods!r}:
    __import__(m)
print(sorted(k for k in sys.modules if k.split(".")[0] in ("mlflow", "streamlit")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_every_core_module_loads_neither_streamlit_nor_mlflow():
    mods = core_modules()
    assert "core.data.phantom" in mods and "core.tracking" in mods and {"core.study.run", "core.study.commands"} <= set(mods)
    assert {"core.runs", "core.report"} <= set(mods)
    code = (f"import sys\nfor m in {mods!r}: __import__(m)\n"
            "print(sorted(k for k in ('streamlit', 'mlflow') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cold_start_pages_import_neither_torch_nor_mlflow(small_phantom):
    code = f"""
import os, sys
os.environ["MEDAUG_DATASET"] = {str(small_phantom.root)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=60).run()
assert not at.exception, at.exception
at.switch_page("pages/dataset.py").run()
assert not at.exception, at.exception
print(sorted(k for k in ('torch', 'mlflow') if k in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
