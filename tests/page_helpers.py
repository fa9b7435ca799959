"""What the page tests share: opening the app on a page over a given dataset, and waiting for a job."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import jobs

ROOT = Path(__file__).resolve().parent.parent


def open_page(page: str, data_root, monkeypatch, max_jobs: int = 1) -> AppTest:
    """The app (AppTest over app.py) on ``pages/<page>.py`` with ``data_root`` as the active dataset."""
    monkeypatch.setenv("MEDAUG_DATASET", str(data_root))
    monkeypatch.setenv("MEDAUG_MAX_JOBS", str(max_jobs))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def wait_done(job_id: str, timeout: float = 240.0) -> jobs.Job:
    """The job once it has ended (fails the test, with its log, if it has not within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while (job := jobs.get_job(job_id)).active and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.active, f"job {job_id} still {job.state}:\n{job.log_tail()}"
    return job
