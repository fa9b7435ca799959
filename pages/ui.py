"""Streamlit helpers shared by the pages: page set-up, the sidebar, the active dataset.

Heavy modules (torch, mlflow) are never imported here; pages import them when needed.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import streamlit as st

from core.data.datasets import (DEFAULT_PHANTOM, Dataset, active_dataset_dir, default_dataset_dir,
                                build_phantom_dataset, load_dataset)

# (script, menu title, icon) of every page, in menu order; the first is the default page.
PAGES = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/dataset.py", "Dataset", ":material/photo_library:"),
    ("pages/augment.py", "Augment", ":material/auto_fix_high:"),
    ("pages/gan.py", "GAN", ":material/model_training:"),
    ("pages/diffusion.py", "Diffusion", ":material/blur_on:"),
    ("pages/explore.py", "Explore a generator", ":material/travel_explore:"),
    ("pages/quality.py", "Quality", ":material/insights:"),
    ("pages/reader.py", "Reader study", ":material/visibility:"),
    ("pages/classify.py", "Classify", ":material/analytics:"),
    ("pages/runs.py", "Runs", ":material/compare:"),
)

# The workflow the product walks through; a step links to its page once the page exists.
WORKFLOW = (
    ("Data", "Load the phantom, VinDr-SpineXR or your own folders; see class balance.", "pages/dataset.py"),
    ("Augment", "Tune the classic augmentations with sliders and build an augmented set.", "pages/augment.py"),
    ("Generate", "Train GANs (DCGAN / WGAN / WGAN-GP) or a diffusion model on scarce classes, explore what they "
                 "learned, and synthesise minority images.", "pages/gan.py"),
    ("Quality", "Score synthetic images: SSIM, PSNR, FID/KID, memorization audit; blinded reader studies.",
     "pages/quality.py"),
    ("Classify", "Train VGG16, GoogLeNet, ResNet-18 or a small CNN on real vs. augmented data.", "pages/classify.py"),
    ("Compare", "Compare runs side by side and export reports from MLflow.", "pages/runs.py"),
)


def setup(title: str) -> Dataset:
    """Page preamble: wide layout, the sidebar, and the active dataset (built on first use)."""
    _leave_v1_routing()
    st.set_page_config(page_title=f"{title} · MedAug Studio", page_icon=":material/radiology:", layout="wide")
    ds = active_dataset()
    sidebar(ds)
    return ds


def navigation():
    """The app's pages, in menu order (app.py runs what this returns)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                          for i, (path, title, icon) in enumerate(PAGES)])


def _leave_v1_routing() -> None:
    """Streamlit treats a folder named ``pages/`` beside the entry script as an old-style
    (v1) multipage app until ``st.navigation`` has run once in the server process. If the
    first request after a server start is a deep link (say ``/gan``), the page script runs
    without app.py and every file in pages/ becomes a menu entry, for the whole process.
    Registering our navigation here ends that mode. The run is then started again, now through
    app.py's navigation: a page drawn in the old mode gives its widgets other ids than the same page
    under ``st.navigation``, so the user's first change (a click, a typed value) was dropped. It
    restarts on the same page with the same query (``?runs=...``), once per session (its first run
    has no click to lose). Not under AppTest: it re-enters the old mode on every run and keeps the
    old mode's page ids, which a restart under st.navigation would replace."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the v1 mode
        return
    if PagesManager.uses_pages_directory:
        navigation()
        page = Path(sys._getframe(2).f_globals.get("__file__", ""))   # the page that called setup()
        own = {Path(path).name: path for path, _, _ in PAGES}
        testing = "streamlit.testing.v1.app_test" in sys.modules
        if page.name in own and not testing and not st.session_state.get("_medaug_routed"):
            st.session_state["_medaug_routed"] = True
            st.switch_page(own[page.name], query_params=st.query_params.to_dict())


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(root: str, stamp: float) -> Dataset:  # stamp: dataset.json mtime, so a rebuilt folder reloads
    return load_dataset(root)


def active_dataset() -> Dataset:
    """The dataset in ``st.session_state['dataset_dir']``, else ``MEDAUG_DATASET``, else the
    default phantom, which the first start renders here with a progress bar."""
    root = Path(st.session_state.get("dataset_dir") or active_dataset_dir())
    meta = root / "dataset.json"
    if not meta.is_file() and root == default_dataset_dir():
        n, size = DEFAULT_PHANTOM["n"], DEFAULT_PHANTOM["size"]
        note = st.empty()   # both go once the dataset is ready
        note.info(f"First start: rendering the built-in **synthetic phantom** dataset ({n} spine "
                  f"radiographs at {size} px). This happens once and takes well under a minute.")
        bar = st.progress(0.0, text="Starting workers…")
        build_phantom_dataset(root, **DEFAULT_PHANTOM, overwrite=root.exists(),
                              on_progress=lambda d, t, m: bar.progress(d / t, text=f"{m} · {d}/{t}"))
        bar.empty()
        note.empty()
    if not meta.is_file():
        st.error(f"No dataset at `{root}`. Create one with `python -m core phantom --out {root}`, "
                 "or unset MEDAUG_DATASET to use the built-in phantom.")
        st.stop()
    return _load(str(root), meta.stat().st_mtime)


def synthetic_badge(ds: Dataset, short: bool = False) -> None:
    """The badge that marks synthetic data wherever it is shown."""
    if ds.synthetic:
        text = "Synthetic phantom" if ds.meta.get("kind") == "phantom" else "Synthetic data"
        st.badge(text if short else f"{text} — not patient data", icon=":material/science:", color="violet")


def _pick_dataset() -> None:
    st.session_state["dataset_dir"] = st.session_state["dataset_picker"]


def dataset_picker(ds: Dataset) -> None:
    """Switch the active dataset among the folders in ``workspace/datasets``."""
    from core.workspace import workspace_dir

    current = str(ds.root)
    found = sorted(str(p.parent.resolve()) for p in workspace_dir("datasets").glob("*/dataset.json"))
    default = active_dataset_dir()  # MEDAUG_DATASET or the built-in phantom
    options = list(dict.fromkeys([current, *([str(default.resolve())] if (default / "dataset.json").is_file() else []),
                                  *found]))
    st.session_state["dataset_picker"] = current  # follow switches made elsewhere (e.g. an import)
    st.selectbox("Active dataset", options, key="dataset_picker", on_change=_pick_dataset,
                 format_func=lambda p: Path(p).name, help="Datasets in the workspace's datasets/ folder")


def sidebar(ds: Dataset) -> None:
    from core.tracking import tracking_uri

    with st.sidebar:
        dataset_picker(ds)
        st.markdown(f"**{ds.name}**  \n`{ds.id}` · {len(ds.manifest):,} images · {len(ds.classes)} classes")
        synthetic_badge(ds, short=True)
        # a caption, not st.code: a code block loads a 1.5 MB highlighter on every page's first load
        st.caption(f"Tracking store  \n`{tracking_uri()}`")


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_cache(_ds: Dataset, content_hash: str, size: int):
    from core.data.cache import pixel_cache

    return pixel_cache(_ds, size)


def cached_pixels(ds: Dataset, size: int = 256):
    """The dataset's pixel cache at ``size``; builds it with a progress bar the first time."""
    from core.data.cache import cache_dir, pixel_cache

    if not (cache_dir(ds) / f"pixels_{size}.npy").is_file():
        bar = st.progress(0.0, text=f"Caching {ds.name} at {size} px…")
        pixel_cache(ds, size, on_progress=lambda d, t, m: bar.progress(d / t, text=f"{m} · {d}/{t}"))
        bar.empty()
    return _open_cache(ds, ds.content_hash, size)


_STATE_COLORS = {"queued": "gray", "running": "blue", "finished": "green", "failed": "red", "died": "red",
                 "diverged": "orange", "cancelled": "gray"}


def job_progress(job) -> None:
    """One background job: state, progress with ETA, latest losses, cancel, and its log."""
    from core import jobs

    s = job.status
    head, cancel = st.columns([5, 1], vertical_alignment="center")
    head.markdown(f"**{job.label}** · `{job.id}`")
    head.badge(job.state, color=_STATE_COLORS.get(job.state, "gray"))
    if job.active and cancel.button("Cancel", key=f"cancel_{job.id}", icon=":material/stop:"):
        jobs.cancel(job.id)
        st.rerun()
    total, step = s.get("total_steps"), s.get("step") or 0
    if total:
        eta = s.get("eta_s")
        eta_text = f" · ETA {eta / 60:.1f} min" if eta and job.active else ""
        rate = f" · {s['img_per_s']:.0f} img/s" if s.get("img_per_s") else ""
        st.progress(min(1.0, step / total), text=f"step {step}/{total} · epoch {s.get('epoch', 0)}"
                                                 f"/{s.get('epochs', '?')}{rate}{eta_text}")
    elif job.active and s.get("eta_s") is not None and (s.get("config") or {}).get("max_seconds"):
        budget = s["config"]["max_seconds"]   # a time budget alone: progress by time
        rate = f" · {s['img_per_s']:.3g} img/s" if s.get("img_per_s") else ""
        st.progress(min(1.0, max(0.0, 1 - s["eta_s"] / budget)),
                    text=f"step {step} · time budget {budget / 60:.1f} min{rate} · ETA {s['eta_s'] / 60:.1f} min")
    if s.get("losses"):
        cols = st.columns(min(6, len(s["losses"])))
        for col, (k, v) in zip(cols, list(s["losses"].items())[:6]):
            col.metric(k, f"{v:.4g}")
    if job.state in ("failed", "died", "diverged"):
        st.error(job.meta.get("error") or s.get("message") or "The job failed; see its log.")
    if s.get("warning"):   # e.g. the MLflow store was lost: training goes on, tracking data waits
        st.warning(s["warning"], icon=":material/cloud_off:")
    with st.expander("Log"):
        st.code(job.log_tail(40) or "(empty)", language=None)


def pick_past_run(kind: str, *, key: str, empty: str):
    """A select box over the tracking store's runs of ``kind`` (newest first); the chosen
    :class:`core.runs.RunSummary`, or None (with ``empty`` shown) when there are none."""
    from core import runs

    by_id = {r.run_id: r for r in runs.run_summaries(kind, max_results=100)}
    if not by_id:
        st.info(empty)
        return None
    run_id = st.selectbox("Run", list(by_id), key=key,   # status DIED: its process is gone
                          format_func=lambda i: f"{by_id[i].name} — {by_id[i].status} · {by_id[i].dataset_id}")
    return by_id[run_id]


def live_jobs_panel(commands: Iterable[str], render: Callable, *, pick_key: str, empty: str) -> None:
    """A picker over the background jobs running ``commands`` (newest first) and the chosen one drawn
    by ``render(job)``, redrawn every 2 s while it is active; the page reruns once when it ends.
    ``st.session_state[pick_key]`` holds the chosen job id (a launch sets it to follow the new job);
    ``empty`` is shown when there is no such job."""
    from core import jobs

    commands = tuple(commands)
    mine = [j for j in jobs.list_jobs() if j.command in commands]
    if not mine:
        st.info(empty)
        return
    ids = [j.id for j in mine]
    if st.session_state.get(pick_key) not in ids:
        st.session_state[pick_key] = ids[0]
    labels = {j.id: f"{j.label} — {j.state} ({j.id})" for j in mine}
    job_id = st.selectbox("Job", ids, key=pick_key, format_func=labels.get)
    active = jobs.get_job(job_id).active

    @st.fragment(run_every=2.0 if active else None)
    def live() -> None:
        job = jobs.get_job(job_id)
        render(job)
        if active and not job.active:
            st.rerun()  # the job just ended: stop polling

    live()


def launch_button(command: str, config: dict, button: str, *, label: str, key: str,
                  icon: str = ":material/play_arrow:", disabled: bool = False, problem: str | None = None):
    """A form's launch: ``config`` (the command's --config fields) is checked as :func:`core.jobs.submit`
    will check it (the command's own ``validate``), what is wrong is shown above a disabled button, and
    a click queues the job. ``problem``: what the page itself found wrong, in its form's words (shown
    instead, and the button disabled). Returns the queued job, or None."""
    from core import jobs

    try:
        if problem:
            raise ValueError(problem)
        jobs.validate(command, config)
    except ValueError as e:
        st.error(str(e), icon=":material/error:")
        disabled = True
    if st.button(button, type="primary", icon=icon, key=key, disabled=disabled):
        return jobs.submit(command, config, label=label)
    return None


@st.cache_data(show_spinner=False, max_entries=256)
def artifact_file(run_id: str, path: str) -> str:
    """A run's artifact as a local file (downloaded once)."""
    from core import tracking

    return str(tracking.download_artifact(run_id, path))


def generator_run_view(job, run_id: str | None, where: str, figure: Callable, *, key: str,
                       grid_every: int | None = None) -> None:
    """Progress, curves and the fixed-noise sample grids over time of one generator run (GAN or diffusion).

    ``figure(history, status)`` draws the run's curves from its MLflow metric history. The grids come
    from the job folder while it exists, else from MLflow; the slider walks them by epoch, or by step
    when ``grid_every`` (steps between grids) is given. ``where`` and ``key`` keep widget keys apart."""
    from core import runs, tracking

    status = job.status if job else {}
    if job is not None:
        job_progress(job)
    if not run_id:
        st.info("Waiting for the job to start logging…")
        return
    history = tracking.metric_history(run_id)
    curves, grid = st.columns([3, 2])
    if history.empty:
        curves.caption("No metrics logged yet.")
    else:
        curves.plotly_chart(figure(history, status), key=f"{key}_curves_{where}_{run_id}")
    quality = status.get("quality")
    if quality:
        text = (f"Best checkpoint (step {quality['best_step']}, {quality['checks']} checks): KID {quality['kid']:.3g}, "
                f"precision {quality['precision']:.2f} [{quality['precision_lo']:.2f}, {quality['precision_hi']:.2f}], "
                f"recall {quality['recall']:.2f}. {quality['reason']}.")
        (curves.success if quality.get("usable") else curves.warning)(text)
    elif status.get("fidelity"):
        f = status["fidelity"]
        curves.caption(f"Fidelity check {f['checks']}: best KID {f['best_kid']:.3g} at step {f['best_step']}.")
    grids = runs.gan_grids(job.dir if job else None, run_id)   # the job folder while it exists, else MLflow
    with grid:
        if not grids:
            st.caption("The first sample grid appears after the first "
                       + (f"{grid_every} steps." if grid_every else "epoch."))
            return
        last_step = int(history["step"].max()) if not history.empty else None

        def name(epoch: int) -> str:   # the last grid of a run stopped by its time budget comes early
            if not grid_every:
                return f"epoch {epoch}"
            step = epoch * grid_every
            return f"step {min(step, last_step) if last_step and epoch == grids[-1][0] else step}"

        epochs = [e for e, _ in grids]
        epoch = st.select_slider("Step" if grid_every else "Epoch", epochs, value=epochs[-1],
                                 format_func=name if grid_every else str,
                                 key=f"{key}_epoch_{where}_{run_id}") if len(epochs) > 1 else epochs[0]
        path = dict(grids)[epoch]
        local = path if Path(path).is_file() else artifact_file(run_id, path)
        st.image(local, caption=f"Fixed-noise samples after {name(epoch)}", width="stretch")
