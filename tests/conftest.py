"""Shared fixtures: every test runs in a temporary workspace with a temporary MLflow store.

Also the one list of slow tests (:data:`SLOW`), marked ``slow`` at collection, so that
``make test-fast`` (``-m "not slow and not browser"``) answers in under 2 minutes on 2 cores."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.data.datasets import build_phantom_dataset

# Tests marked ``slow``: a file name (all its tests) or ``file::test`` (every parametrization).
# Chosen from one full run with --durations=0 on 2 shared cores (19 min in all; seconds are
# setup + call, in that run): what dominates is real training end to end, subprocesses and
# jobs, servers, Monte-Carlo checks; then the heaviest of the rest, until `make test-fast`
# took under 2 minutes (the last three were measured in that run). A name that no
# longer exists stops the run at collection (see pytest_collection_modifyitems), so this list
# cannot go stale silently. Browser tests are marked ``browser`` in their files instead.
SLOW: dict[str, str] = {
    "test_study_planted.py": "147 s: a 3-seed study with real training finds a planted effect",
    "test_tracking_server.py": "110 s: a real `mlflow server` killed mid-job",
    "test_study.py": "104 s: studies of real training cells, a shell fan-out",
    "test_distributed.py": "87 s: torchrun / gloo process groups",
    "test_study_ray.py::test_ray_study_table_equals_the_in_process_one":
        "41 s: a local 2-CPU Ray cluster (5 s) and the tiny study in-process and on Ray (module fixtures)",
    "test_study_ray.py::test_killed_worker_is_retried_into_one_child_and_a_local_study_resumes_on_ray":
        "14 s: a tiny study in-process, then on Ray with a worker SIGKILLed",
    "test_study_ray.py::test_a_cell_that_raises_fails_with_its_reason_once_and_the_others_finish": "3 s: on Ray",
    "test_study_ray_tracking.py": "165 s in make test: a real `mlflow server` killed mid-cell under two tiny "
                                  "studies on a local 3-CPU Ray (61 s, 66 s; module fixtures 39 s: Ray, the "
                                  "server, the in-process reference study)",
    "test_setmetrics_coverage.py": "42 s: Monte-Carlo coverage of the set-metric intervals (module fixture)",
    "test_classify.py::test_small_cnn_learns_the_phantom_classes_well_above_chance": "35 s: 10-epoch training",
    "test_classify.py::test_label_shuffled_control_stays_at_chance": "shares the 10-epoch training above",
    "test_classify.py::test_every_network_builds_trains_a_step_and_gives_embeddings": "16 s: 5 networks",
    "test_classify.py::test_core_classify_trains_without_pandas_mlflow_streamlit": "14 s: subprocess",
    "test_classify.py::test_cli_train_classifier_logs_to_mlflow_and_writes_status": "4 s: CLI training",
    "test_gan.py::test_cli_sigterm_cancels_with_status_and_a_killed_run": "22 s: subprocess training",
    "test_diffusion.py::test_a_study_with_the_diffusion_set_trains_it_once_measures_it_and_reports_its_row":
        "60-120 s: a study with a diffusion model, its sampling, the domain encoder and its quality",
    "test_diffusion.py::test_cli_train_diffusion_then_generate_on_the_phantom": "2 subprocesses importing monai",
    "test_gan.py::test_core_gan_trains_and_samples_without_pandas_mlflow_streamlit": "8 s: subprocess",
    "test_gan_page.py::test_launch_watch_browse_and_balance": "34 s: real jobs from the page",
    "test_diffusion_page.py::test_a_real_tiny_job_trains_and_its_grids_show_live_and_from_mlflow":
        "79 s on loaded cores: a real diffusion job from the page",
    "test_gan_fidelity.py::test_a_noise_blob_generator_is_marked_unusable_with_complete_quality": "5 s",
    "test_gan_fidelity.py::test_cli_train_gan_logs_the_fidelity_curve_and_the_quality": "3 s: CLI training",
    "test_tracking.py::test_two_processes_opening_a_fresh_store_at_once": "25 s: two processes",
    "test_study_stats.py::test_null_false_positive_rate_and_ci_coverage_of_a_known_delta": "11 s: simulation",
    "test_study_stats.py::test_paired_bootstrap_equals_direct_computation_on_all_256_resamples": "15 s",
    "test_study_verdict.py::test_cells_keep_their_test_predictions": "7 s: the module's tiny study",
    "test_study_verdict.py::test_table_csv_tstr_and_generator_columns": "8 s: the tiny study",
    "test_study_verdict.py::test_unusable_generator_is_not_judged": "the tiny study",
    "test_study_verdict.py::test_verdict_quotes_the_tables_numbers": "the tiny study",
    "test_study_verdict.py::test_report_opens_with_the_answer": "3 s: the tiny study",
    "test_hardening_jobs.py::test_killed_train_classifier_resumes_into_the_same_mlflow_run": "15 s: jobs",
    "test_hardening_jobs.py::test_a_deleted_run_is_marked_killed_and_the_resume_starts_a_named_new_run": "12 s",
    "test_hardening_jobs.py::test_a_killed_command_shows_as_died_in_the_job_list": "10 s: a job killed",
    "test_hardening_jobs.py::test_a_file_size_limit_in_a_child_process_fails_the_job_with_the_reason": "10 s",
    "test_hardening_jobs.py::test_killed_train_gan_shows_died_and_resumes_into_the_same_mlflow_run": "9 s",
    "test_hardening_jobs.py::test_a_second_job_on_the_same_out_refuses_and_names_the_first": "7 s: jobs",
    "test_hardening_prepare.py::test_file_size_limit_stops_the_run_naming_the_folder_and_a_rerun_resumes": "8 s",
    "test_hardening_prepare.py::test_workers_die_with_a_killed_prepare": "5 s: a killed process pool",
    "test_hardening_data.py::test_the_dataset_page_deletes_its_upload_after_the_import": "5 s: an import",
    "test_jobs.py::test_job_runs_detached_and_reports": "3 s: a background job (subprocesses)",
    "test_jobs.py::test_queue_respects_the_maximum_and_advances_by_itself": "7 s: two jobs in turn",
    "test_jobs.py::test_two_jobs_run_at_once_when_allowed": "4 s: two jobs",
    "test_jobs.py::test_cancel_stops_the_processes_and_starts_the_next": "4 s: two jobs, one cancelled",
    "test_jobs.py::test_failed_command_records_its_error": "4 s: a job",
    "test_ingest.py::test_cli_phantom_vindr_then_prepare": "7 s: CLI subprocesses",
    "test_ingest.py::test_dataset_page_upload_of_files": "10 s: an import from the page",
    "test_quality.py::test_inception_extractor_reads_a_local_weights_file": "8 s: Inception v3",
    "test_quality.py::test_quality_cli_two_gan_runs_epochs_and_a_planted_copy": "5 s: GAN runs and the CLI",
    "test_classify_page.py::test_launch_a_study_and_read_its_results": "13 s: a study job from the page",
    "test_pages.py::test_first_start_renders_the_phantom_and_then_clears_its_banner": "7 s: renders a phantom",
    "test_ingest.py::test_dataset_page_imports_a_server_folder_and_switches_to_it": "6 s: an import from the page",
    "test_augment.py::test_augment_dataset_writes_a_valid_set_and_logs_a_run": "5 s: writes an augmented set",
    "test_data.py::test_phantom_build_is_deterministic": "3 s: renders two more phantoms",
}


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    return tmp_path_factory.mktemp("medaug_home")


@pytest.fixture(autouse=True)
def isolated_workspace(session_home, monkeypatch):
    """MEDAUG_HOME and MLFLOW_TRACKING_URI point at a temporary workspace and SQLite store
    (one per session: creating an MLflow schema costs seconds), never at ./workspace."""
    monkeypatch.setenv("MEDAUG_HOME", str(session_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    monkeypatch.delenv("MEDAUG_DATASET", raising=False)
    return session_home


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is faster, and immune to other processes on the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A small phantom dataset (all 8 classes, 64 px), built once per session."""
    return build_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom-small", n=160, size=64, seed=1,
                                 workers=2)


@pytest.fixture
def http_calls(monkeypatch):
    """Every HTTP request the test makes, in order, as ``(how, url, timeout)``; the requests still go out.

    ``how`` is ``"probe"`` for urllib (core.tracking.check_store's single health check) and
    ``"mlflow"`` for the ``requests`` library (MLflow's REST client, which retries with back-off:
    seconds to minutes against a server that is gone). So "fails fast" is checked as what makes it
    fast (one bounded probe, no MLflow request) rather than by a wall clock."""
    import urllib.request

    import requests.adapters

    calls: list[tuple[str, str, object]] = []
    urlopen, send = urllib.request.urlopen, requests.adapters.HTTPAdapter.send

    def spy_urlopen(url, data=None, timeout=None, **kw):
        calls.append(("probe", getattr(url, "full_url", url), timeout))
        return urlopen(url, data, timeout, **kw) if timeout is not None else urlopen(url, data, **kw)

    def spy_send(self, request, *args, **kwargs):
        calls.append(("mlflow", request.url, kwargs.get("timeout")))
        return send(self, request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", spy_urlopen)
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", spy_send)
    return calls


def _slow_entries_that_do_not_exist(tests_dir: Path) -> list[str]:
    """SLOW entries whose file is gone, or whose file no longer defines the test."""
    stale = []
    for entry in SLOW:
        file, _, test = entry.partition("::")
        path = tests_dir / file
        name = test.split("::")[-1]
        if not path.is_file() or (name and not re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(",
                                                           path.read_text(encoding="utf-8"), re.M)):
            stale.append(entry)
    return stale


@pytest.hookimpl(tryfirst=True)   # before -m / -k / --deselect take items away
def pytest_collection_modifyitems(config, items):
    """Mark the SLOW tests ``slow``; stop the run if an entry names nothing."""
    stale = _slow_entries_that_do_not_exist(Path(__file__).resolve().parent)
    if stale:
        raise pytest.UsageError("tests/conftest.py: SLOW names tests that do not exist (renamed or removed?): "
                                + ", ".join(stale))
    matched = set()
    for item in items:
        file = item.path.name
        test = file + "::" + item.nodeid.split("::", 1)[1].split("[")[0] if "::" in item.nodeid else file
        for entry in (file, test):
            if entry in SLOW:
                item.add_marker(pytest.mark.slow)
                matched.add(entry)
    # a file collected whole (not narrowed to some of its tests by a node id) must match all its entries
    narrowed = {Path(arg.split("::")[0]).name for arg in config.args if "::" in arg}
    collected = {item.path.name for item in items} - narrowed
    unmatched = [e for e in SLOW if e not in matched and e.partition("::")[0] in collected]
    if unmatched:
        raise pytest.UsageError("tests/conftest.py: SLOW names tests that were not collected: " + ", ".join(unmatched))
