"""Architecture rules: core never imports streamlit; mlflow stays behind core.tracking; the app's
cold start (Home and Dataset) imports neither torch nor mlflow."""
from __future__ import annotations

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
