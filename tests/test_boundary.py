"""Architecture rules: core never imports streamlit; the data layer stays free of torch/mlflow."""
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


def test_importing_every_core_module_loads_no_ui_or_heavy_packages():
    mods = core_modules()
    assert "core.data.phantom" in mods and "core.tracking" in mods
    code = (f"import sys\nfor m in {mods!r}: __import__(m)\n"
            "print(sorted(k for k in ('streamlit', 'torch', 'mlflow') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
