"""app.py under a spawn process pool. Streamlit installs the running script as ``__main__``; a pool
started with the spawn method (the first start's phantom render, the pixel cache, an import) re-runs
that file in each worker as ``__mp_main__``. The workers must not build the app there: before
app.py's ``__main__`` guard each one did, in bare mode, and the first `make run` printed about 18
"missing ScriptRunContext" warnings while the phantom rendered."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn_under(script: Path) -> subprocess.CompletedProcess:
    """Install ``script`` as ``__main__`` as Streamlit does, then run a task in two spawned workers;
    prints whether a worker had imported streamlit."""
    code = f"""
import sys, types
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

main = types.ModuleType("__main__")
main.__file__ = {str(script)!r}
sys.modules["__main__"] = main
with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
    found = list(pool.map(eval, ["'streamlit' in __import__('sys').modules"] * 2))
print("worker imported streamlit:", any(found))
"""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_spawned_workers_do_not_run_the_app():
    out = spawn_under(ROOT / "app.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "worker imported streamlit: False"
    assert "ScriptRunContext" not in out.stderr, out.stderr


def test_the_app_still_runs_as_main(small_phantom, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title and at.title[0].value   # the default page (Home) was drawn through the navigation
