"""Classify page: train one classifier or run the augmentation study (augmentation sets x
networks x seeds) as background jobs, watch them live, and read the study's answer from MLflow:
the results table, CI bars, the per-class Δ sensitivity heatmap, epoch curves, confusion matrices."""
import json
import os
import re

import pandas as pd
import streamlit as st

from core import jobs, runs, tracking
from core.charts import (cell_board_html, classifier_curves_figure, confusion_matrix_figure, delta_heatmap_figure,
                         study_bar_figure)
from core.study.grid import AUG_SETS, GAN_VARIANTS, METRICS, PRESETS, cells, preset
from core.study.results import delta_sensitivity, wide_table
from pages import ui

ds = ui.setup("Classify")
st.title("Classification and the augmentation study")
ui.synthetic_badge(ds)
st.caption("Does augmentation help, for which class, by how much? Every cell trains on the **training split** plus "
           "its augmented or synthetic images; validation and test images are never augmented, and every cell is "
           "tested on the same test split.")
JOB_COMMANDS = ("study", "train-classifier")
CURVE_KEYS = ["train_loss", "val_loss", "train_acc", "val_acc", "val_macro_f1"]
RUN_ON = {"This machine": "local", "Ray cluster": "ray"}
RAY_DATA_HELP = {"auto": "the object store for a dataset up to 512 MB, else each task loads the folder",
                 "object-store": "the images travel once through Ray's object store to every task",
                 "path": "every task loads the dataset folder itself: a path every node must see (a shared disk)"}
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*" \
        r"|\[[0-9A-Fa-f:.]+\])"
_ADDRESS = re.compile(rf"(?:ray://)?{_HOST}:(\d{{1,5}})")


@st.cache_data(show_spinner=False)
def network_notes() -> dict[str, str]:
    from core.classify.models import MODELS  # loads torch: only when this page draws its forms

    return {name: spec.note for name, spec in MODELS.items()}


def launched(job: jobs.Job) -> None:
    st.session_state["clf_job_pick"] = job.id   # the Live tab (drawn after this one) follows it
    st.toast(f"Job {job.id} {job.state}.", icon=":material/rocket_launch:")


def study_form() -> None:
    notes = network_notes()
    top = st.columns([1, 3])
    name = top[0].selectbox("Preset", PRESETS, key="st_preset",
                            help="quick: phantom at 64 px, the small CNN, real + the 7 classic operations + DCGAN + "
                                 "WGAN, 1 seed (CPU, < 15 min). paper: VGG16 + Inception-v3, every set, 3 seeds (GPU).")
    base = preset(name)
    sets = top[1].multiselect("Augmentation sets", list(AUG_SETS), default=list(base.sets), key=f"st_sets_{name}",
                              format_func=lambda k: AUG_SETS[k].label,
                              help="'real only' is the baseline of every Δ and is always included.")
    c = st.columns(5)
    networks = c[0].multiselect("Networks", list(notes), default=list(base.networks), key=f"st_nets_{name}")
    n_seeds = c[1].number_input("Seeds", 1, 10, len(base.seeds), key=f"st_seeds_{name}",
                                help="1 seed: bootstrap CIs on the test set; 2+: t intervals over seeds.")
    epochs = c[2].number_input("Epochs per cell", 1, 500, base.epochs, key=f"st_epochs_{name}")
    size = c[3].number_input("Image size (px)", 16, 512, base.image_size, key=f"st_size_{name}")
    device = c[4].selectbox("Device", ["auto", "cpu", "cuda"], key="st_device")
    with st.expander("GAN sets (trained once per study on the training split, shared by its cells)"):
        g = st.columns(len(GAN_VARIANTS) + 1)
        steps = {v: int(g[i].number_input(f"{v} steps", 1, 1_000_000, base.gan_steps[v], key=f"st_gan_{v}_{name}"))
                 for i, v in enumerate(GAN_VARIANTS)}
        cap = g[-1].number_input("Synthetic per real image (cap)", 0.0, 100.0, float(base.gan_cap), step=0.5,
                                 key=f"st_cap_{name}", help="The balancing planner tops classes up to the largest "
                                                            "class, at most this many synthetic images per real one.")
    executor, ray_fields, problem = run_on_choice()
    fields = {"sets": ["real", *[s for s in sets if s != "real"]], "networks": networks,
              "seeds": list(range(int(n_seeds))), "epochs": int(epochs), "image_size": int(size), "device": device,
              "gan_steps": steps, "gan_cap": float(cap), "preset": name, "data": str(ds.root), "out": "{job_dir}",
              "executor": executor, **ray_fields}
    try:
        _, _, config = jobs.validate("study", {**fields, "address": None} if problem else fields)
        if not networks:
            raise ValueError("choose at least one network.")
    except ValueError as e:
        st.error(str(e))
        return
    n = len(cells(config))
    gans = config.gan_variants()
    st.caption(f"**{n} cells** ({len(config.sets)} sets × {len(config.networks)} networks × {len(config.seeds)} seeds)"
               + (f", plus one generator each: {', '.join(gans)}" if gans else "") + f". Dataset `{ds.id}`. "
               + at_once_text(executor, ray_fields.get("address")))
    on_ray = executor == "ray"
    job = ui.launch_button("study", fields, "Launch study on Ray" if on_ray else "Launch study", key="st_launch",
                           label=f"study · {name} · {n} cells" + (" · Ray" if on_ray else ""), problem=problem,
                           icon=":material/hub:" if on_ray else ":material/play_arrow:")
    if job is not None:
        launched(job)


def address_problem(address: str) -> str | None:
    """What is wrong with the shape of a Ray address (None when it looks right; blank and ``auto`` are
    right). The address itself is only tried by the job: the app never imports ray."""
    a = address.strip()
    if not a or a == "auto":
        return None
    if a.startswith(("http://", "https://")):
        return (f"Ray address {a!r} is a web address (like the dashboard's or the Jobs API's); give "
                f"the cluster's HOST:6379, or ray://HOST:10001 for Ray Client.")
    if "://" in a and not a.startswith("ray://"):
        return f"Ray address {a!r}: the only scheme is ray:// (Ray Client, like ray://HOST:10001)."
    m = _ADDRESS.fullmatch(a)
    if m is None:
        port_hint = "ray://HOST:10001" if a.startswith("ray://") else "HOST:6379"
        return (f"Ray address {a!r} is not of the shape {port_hint}: leave it blank (a local Ray on this machine), "
                f"or write auto, HOST:6379 or ray://HOST:10001.")
    if not 1 <= int(m.group(1)) <= 65535:
        return f"Ray address {a!r}: port {m.group(1)} is not a port (1-65535)."
    return None


def at_once_text(executor: str, address: str | None) -> str:
    """How many cells run at once, for the form's caption."""
    if executor != "ray":
        return "On this machine: **1 cell at a time**, in the job's own process."
    if not address:
        gpus, cpus = jobs.gpu_count(), os.cpu_count() or 1
        return (f"On a local Ray started on this machine: **{gpus or cpus} cells at once** "
                f"(one per {'GPU' if gpus else 'CPU core'}), each generator a task of its own.")
    return ("On the Ray cluster: **as many cells at once as it has GPUs** (or CPUs, without GPUs), each generator a "
            "task of its own. `--out` and the MLflow store must be on paths every node sees.")


def run_on_choice() -> tuple[str, dict, str | None]:
    """The form's "Run on" part: (executor, its job fields, what is wrong with them or None)."""
    where = st.radio("Run on", list(RUN_ON), horizontal=True, key="st_run_on",
                     help="This machine: the cells one after another in the job's process. Ray cluster: every "
                          "generator and cell is a Ray task, as many at once as the cluster has GPUs (or CPUs).")
    if RUN_ON[where] == "local":
        return "local", {}, None
    c = st.columns([3, 1, 2])
    address = c[0].text_input("Ray address", key="st_ray_address", placeholder="blank: a local Ray on this machine",
                              help="Blank: start a local Ray with this machine's CPUs and GPUs. auto: the Ray started "
                                   "here with `ray start --head`. HOST:6379: a cluster's head. ray://HOST:10001: Ray "
                                   "Client. A cluster with token authentication (Ray's default for `ray start`) needs "
                                   "RAY_AUTH_MODE=token and its token where the app runs.").strip()
    retries = c[1].number_input("Retries per cell", 0, 100, 3, key="st_ray_retries",
                                help="Ray retries a cell whose worker died (killed, out of memory, node lost); the "
                                     "retry continues the cell's MLflow run. A cell that raises is not retried.")
    data = c[2].selectbox("Data", list(RAY_DATA_HELP), key="st_ray_data",
                          help="How tasks get the images: " + "; ".join(f"{k}: {v}" for k, v in RAY_DATA_HELP.items())
                               + ". Either way --out and the MLflow store must be on paths every node sees.")
    return "ray", {"address": address or None, "max_retries": int(retries), "ray_data": data}, address_problem(address)


def single_form() -> None:
    notes = network_notes()
    c = st.columns(3)
    model = c[0].selectbox("Network", list(notes), key="one_model", help="\n".join(f"{k}: {v}" for k, v in notes.items()))
    c[0].caption(notes[model])
    size = c[1].number_input("Image size (px)", 16, 512, 64, key="one_size", help="Inception-v3 always uses 299 px.")
    epochs = c[2].number_input("Epochs", 1, 1000, 10, key="one_epochs")
    d = st.columns(5)
    batch = d[0].number_input("Batch", 2, 1024, 32, key="one_batch")
    lr = d[1].number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="one_lr")
    balance = d[2].selectbox("Class balance", ["none", "weighted_loss", "sampler"], key="one_balance")
    seed = d[3].number_input("Seed", 0, 2**31 - 1, 0, key="one_seed")
    device = d[4].selectbox("Device", ["auto", "cpu", "cuda"], key="one_device")
    shuffled = st.toggle("Shuffled-label control", key="one_shuffle",
                         help="Train on permuted training labels: an honest run reaches only chance-level macro-F1.")
    config = {"model": model, "image_size": int(size), "epochs": int(epochs), "batch_size": int(batch),
              "lr": float(lr), "balance": balance, "seed": int(seed), "device": device,
              "shuffle_labels": shuffled, "data": str(ds.root), "out": "{job_dir}"}
    job = ui.launch_button("train-classifier", config, "Launch training", key="one_launch",
                           label=f"{model} · {size}px" + (" · shuffled labels" if shuffled else ""))
    if job is not None:
        launched(job)


@st.cache_data(show_spinner=False, max_entries=512)
def cell_report(run_id: str) -> dict:
    """metrics.json of a finished cell or classifier run (confusion matrix, per-class metrics)."""
    path = tracking.download_artifact(run_id, "metrics.json")
    return json.loads(path.read_text())


def curves_and_confusion(run_id: str, where: str, best_epoch: int | None = None, finished: bool = True) -> None:
    left, right = st.columns([1, 1])
    history = tracking.metric_history(run_id, CURVE_KEYS)
    if history.empty:
        left.caption("No epoch has finished yet.")
    else:
        left.plotly_chart(classifier_curves_figure(history, best_epoch), key=f"clf_curves_{where}_{run_id}")
    if not finished:
        return
    try:
        report = cell_report(run_id)
    except Exception:  # noqa: BLE001 (an unfinished or failed run has no metrics.json; MLflow raises various types)
        right.caption("No test metrics for this run.")
        return
    m = report["metrics"]
    right.plotly_chart(confusion_matrix_figure(m["confusion_matrix"], m["classes"]), key=f"clf_cm_{where}_{run_id}")
    right.caption(f"Test: accuracy {m['accuracy']:.3f} · balanced accuracy {m['balanced_accuracy']:.3f} · "
                  f"macro-F1 {m['macro_f1']:.3f} (epoch {report.get('best_epoch')} weights, n = {m['n']}).")


def study_progress(job: jobs.Job) -> None:
    s = job.status
    total, done = s.get("cells_total"), s.get("cells_done") or 0
    states = s.get("cell_states") or {}
    if total:
        eta = s.get("eta_s")
        cur = s.get("current")
        if states:   # per-state counts (both executors keep them): finished · running · pending · failed
            n = {k: s.get(f"cells_{k}", sum(v == k for v in states.values())) or 0
                 for k in ("pending", "running", "failed")}
            text = f"finished {done}/{total} · running {n['running']} · pending {n['pending']} · failed {n['failed']}"
        else:        # a status file from before the per-state fields
            text = f"cells {done}/{total}"
        if cur and job.active and s.get("executor", "local") == "local":
            text += f" · now {cur} (epoch {s.get('cell_epoch', 0)}/{s.get('cell_epochs', '?')})"
        if job.active and eta is not None:
            text += f" · ETA {eta / 60:.1f} min"
        elif job.active and states:
            text += " · ETA after the first cell"
        st.progress(min(1.0, done / total), text=text)
    notes = []
    if s.get("executor") == "ray":
        notes.append("Run on Ray" + (f": {s['ray_slots']} cells at once" if s.get("ray_slots") else ""))
    if s.get("message") and job.active:
        notes.append(str(s["message"]))
    if notes:
        st.caption(" · ".join(notes))
    if states:
        st.html(cell_board_html(states, s.get("failed") or {}, {k: a.label for k, a in AUG_SETS.items()}))
    failed = s.get("failed") or {}
    if failed:
        lines = [f"- `{cell}`: {str(reason)[:500]}" for cell, reason in failed.items()]
        text = (f"**{len(failed)} cell{'s' if len(failed) > 1 else ''} failed** (`--resume` reruns only the "
                f"unfinished cells):\n" + "\n".join(lines[:5]))
        st.error(text, icon=":material/error:")
        if len(lines) > 5:
            with st.expander(f"All {len(lines)} failed cells"):
                st.markdown("\n".join(lines))
    if s.get("run_id") and done:
        results_view(s["run_id"], f"live_{job.id}", s.get("config", {}).get("metric", "macro_f1"), compact=True,
                     cells_done=done)


def classifier_progress(job: jobs.Job) -> None:
    s = job.status
    if s.get("epochs"):
        eta = s.get("eta_s")
        st.progress(min(1.0, (s.get("epoch") or 0) / s["epochs"]),
                    text=f"epoch {s.get('epoch') or 0}/{s['epochs']}"
                         + (f" · {s['img_per_s']:.0f} img/s" if s.get("img_per_s") else "")
                         + (f" · ETA {eta / 60:.1f} min" if eta and job.active else ""))
    if s.get("run_id"):
        curves_and_confusion(s["run_id"], f"job_{job.id}", s.get("best_epoch"), finished=not job.active)


def job_view(job: jobs.Job) -> None:
    ui.job_progress(job)
    (study_progress if job.command == "study" else classifier_progress)(job)


def live_panel() -> None:
    ui.live_jobs_panel(JOB_COMMANDS, job_view, pick_key="clf_job_pick",
                       empty="No classifier or study jobs yet: launch one in the Study or Single run tab.")


@st.cache_data(show_spinner="Paired tests against real only…", ttl=30)
def study_answer(run_id: str, metric: str, per_class: bool, cells_done: int | None = None) -> dict:
    """The study's answer from MLflow; ``cells_done`` (a live job's count) is only part of the cache key, so
    the live table follows each finished cell instead of lagging up to the cache's 30 s."""
    from core.study.verdict import study_answer as answer

    return answer(run_id, metric, per_class=per_class)


def styled(table: pd.DataFrame):
    """The wide table (sets x networks), each cell tinted by its Δ against real only."""
    text, delta = wide_table(table), wide_table(table, "delta").astype(float)
    bound = max(0.02, float(delta.abs().max().max())) if delta.notna().any().any() else 1.0

    def tint(v: float) -> str:
        if pd.isna(v) or v == 0:
            return ""
        alpha = min(1.0, abs(v) / bound) * 0.55
        rgb = "0, 158, 115" if v > 0 else "213, 94, 0"
        return f"background-color: rgba({rgb}, {alpha:.2f})"

    return text.style.apply(lambda _: delta.map(tint), axis=None)


def results_view(run_id: str, where: str, metric: str = "macro_f1", compact: bool = False,
                 cells_done: int | None = None) -> None:
    try:
        answer = study_answer(run_id, metric, not compact, cells_done)
    except ValueError as e:   # e.g. cells tested on different test splits
        st.error(str(e))
        return
    cells_df, table = answer["cells"], answer["table"]
    if cells_df.empty:
        st.info("No finished cells yet.")
        return
    st.markdown("**The answer**\n" + "\n".join(f"- {line}" for line in answer["verdict"]))
    st.markdown(f"**Results: {metric}**, mean [95% CI] and paired Δ [95% CI] against real only "
                f"({'; '.join(sorted(set(table['ci_method'])))}; Δ paired image by image, Holm across the table). "
                f"Green: better than real only, orange: worse.")
    rows = table["set"].nunique()   # every set in view: the table is the study's answer, not a scroll box
    st.dataframe(styled(table), key=f"st_table_{where}", width="stretch", height=min(40 + 35 * rows, 900))
    if compact:
        return
    st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(), f"study-{run_id[:8]}.csv",
                       "text/csv", key=f"st_csv_{where}", icon=":material/download:")
    st.plotly_chart(study_bar_figure(table, metric), key=f"st_bars_{where}")
    networks = list(dict.fromkeys(cells_df["network"]))
    net = st.selectbox("Network for the per-class view", networks, key=f"st_net_{where}") if len(networks) > 1 \
        else networks[0]
    heat = delta_sensitivity(cells_df, net, sensitivity=answer["sensitivity"])
    if heat.empty:
        st.caption("The per-class Δ needs a finished real-only cell and one other cell.")
    else:
        st.plotly_chart(delta_heatmap_figure(heat, f"Δ sensitivity against real only ({net}, paired, mean over seeds)"),
                        key=f"st_heat_{where}")
    st.markdown("**One cell**: its epoch curves and its confusion matrix on the test split")
    by_cell = {r.cell: r for r in cells_df.itertuples()}
    keys = sorted(by_cell, key=lambda k: (list(AUG_SETS).index(by_cell[k].set) if by_cell[k].set in AUG_SETS else 99, k))
    pick = st.selectbox("Cell", keys, key=f"st_cell_{where}",
                        format_func=lambda k: f"{AUG_SETS[by_cell[k].set].label} · {by_cell[k].network} · seed "
                                              f"{by_cell[k].seed}")
    row = by_cell[pick]
    curves_and_confusion(row.run_id, f"{where}_cell", row.best_epoch)


def results_tab() -> None:
    by_id = {r.run_id: r for r in runs.run_summaries("study", max_results=100)}
    if not by_id:
        st.info("No study in the tracking store yet: launch one in the Study tab, or run "
                "`python -m core study --preset quick`.")
        return
    c = st.columns([3, 1])
    wanted = st.query_params.get("study", "")   # ?study=RUN_ID (or its first characters) opens that study
    first = next((i for i, k in enumerate(by_id) if wanted and k.startswith(wanted)), 0)
    run_id = c[0].selectbox("Study", list(by_id), key="st_pick", index=first,   # status DIED: its process is gone
                            format_func=lambda i: f"{by_id[i].name} — {by_id[i].status} · {by_id[i].dataset_id} · "
                                                  f"{i[:8]}")
    metric = c[1].selectbox("Metric", METRICS, key="st_metric")
    tags = by_id[run_id].tags
    st.caption(f"Study run `{run_id}` · {tags.get('medaug.study.cells', '?')} cells · test split hash "
               f"`{tags.get('medaug.study.test_hash', '?')}` · folder `{tags.get('medaug.out', '')}`")
    results_view(run_id, "past", metric)


study_tab, single_tab, live_tab, results = st.tabs(["Study", "Single run", "Live jobs", "Results"])
with study_tab:
    study_form()
with single_tab:
    single_form()
with live_tab:
    live_panel()
with results:
    results_tab()
