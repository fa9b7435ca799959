"""Runs page: every run in the tracking store, filtered and grouped by study; selected runs
compared side by side (curves, params diff, final/best metrics, sample grids under one epoch
slider); rename, trash and restore; a self-contained HTML report to download."""
import hashlib
import time
from datetime import date

import streamlit as st

from core import runs as R
from core import tracking
from core.charts import run_curves_figure
from pages import ui

ui.setup("Runs")
st.title("Runs")

DIFF_STYLE = "background-color: #ffe7a3; font-weight: 600"


def store_reachable() -> bool:
    """False (with the reason on the page) when the store cannot be reached."""
    try:
        tracking.check_store(timeout_s=3.0)
    except tracking.StoreUnavailable as e:
        st.error(str(e), icon=":material/cloud_off:")
        st.caption(f"Tracking store: `{tracking.tracking_uri()}`")
        return False
    return True


def getting_started() -> None:
    with st.container(border=True):
        st.markdown("#### :material/rocket_launch: No runs yet — how to get started")
        st.markdown("Every job of MedAug Studio logs its params, curves and images to MLflow, and this page "
                    "lists and compares them. Create a first run:")
        c1, c2 = st.columns(2)
        c1.page_link("pages/gan.py", label="Train a GAN (GAN page, Train tab)", icon=":material/model_training:")
        c2.page_link("pages/augment.py", label="Apply augmentations (Augment page)", icon=":material/auto_fix_high:")
        st.markdown("or from a shell, a one-epoch GAN on the built-in phantom:")
        st.code("python -m core phantom --out workspace/datasets/phantom\n"
                "python -m core train-gan --data workspace/datasets/phantom --class Osteophytes "
                "--epochs 1 --width 16", language="bash")
        st.caption(f"Tracking store: `{tracking.tracking_uri()}` (set MLFLOW_TRACKING_URI for a team server).")


def bump() -> None:
    """Forget cached listings (after a rename, delete or restore)."""
    st.session_state["runs_version"] = st.session_state.get("runs_version", 0) + 1


@st.cache_data(show_spinner=False, ttl=120, max_entries=16)
def load_runs(uri: str, deleted: bool, version: int):
    t0 = time.perf_counter()
    table = R.list_runs(deleted=deleted)
    return table, time.perf_counter() - t0


@st.cache_data(show_spinner=False, ttl=600, max_entries=32)
def load_curves(run_ids: tuple[str, ...], version: int, _table):
    return R.curves(_table)


@st.cache_data(show_spinner=False, ttl=600, max_entries=128)
def load_images(run_id: str) -> tuple[dict, list[str]]:
    paths = R.list_artifacts_tree(run_id)
    return R.epoch_images(run_id, paths), R.other_images(paths)


@st.cache_data(show_spinner=False, max_entries=512)
def image_bytes(run_id: str, path: str) -> bytes:
    return R.artifact_bytes(run_id, path)


def filters(table):
    """The filter widgets; returns the RunFilter they describe."""
    choices = R.filter_choices(table)
    ds_names = dict(zip(table["dataset_hash"], table["dataset_id"]))
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    kinds = c1.multiselect("Job kind", choices["kinds"], key="runs_kind", placeholder="all kinds")
    hashes = c2.multiselect("Dataset", choices["dataset_hashes"], key="runs_dataset", placeholder="all datasets",
                            format_func=lambda h: f"{ds_names.get(h) or '?'} · {h[:10]}")
    statuses = c3.multiselect("Status", choices["statuses"], key="runs_status", placeholder="any status")
    text = c4.text_input("Name or run id", key="runs_text", placeholder="search")
    c5, c6, c7, c8 = st.columns([2, 2, 2, 2])
    days = table["start_time"].dt.date
    lo, hi = (days.min(), days.max()) if len(days) else (date.today(), date.today())
    dates = c5.date_input("Started between", value=(lo, hi), key="runs_dates", format="YYYY-MM-DD")
    tag_text = c6.text_input("Tags", key="runs_tags", placeholder="team=spine, seed",
                             help="Comma-separated `tag=value` (exact) or `tag` (present). Tags in this "
                                  f"listing: {', '.join(choices['tag_keys']) or 'none'}")
    try:
        tags = R.parse_tag_filter(tag_text)
    except ValueError as e:
        c6.error(str(e))
        tags = {}
    exps = c7.multiselect("Experiment", choices["experiments"], key="runs_exp", placeholder="all experiments")
    c8.toggle("Keep whole studies", value=True, key="runs_family",
              help="Keep the parent of a matching child run, and the children of a matching parent.")
    since, until = (tuple(dates) + (None, None))[:2] if isinstance(dates, (tuple, list)) else (dates, dates)
    return R.RunFilter(kinds=tuple(kinds), dataset_hashes=tuple(hashes), tags=tags, since=since, until=until,
                       statuses=tuple(statuses), text=text.strip(), experiments=tuple(exps),
                       keep_family=st.session_state["runs_family"])


def listing(shown):
    """The grouped table with row selection; returns the selected run ids (children of a selected
    study added when asked)."""
    grouped = R.group_runs(shown)
    display = R.display_table(grouped)
    ids = display["run_id"].tolist()
    if "runs_url_read" not in st.session_state:  # a shared link: ?runs=ID,ID,... selects those runs
        st.session_state["runs_url_read"] = True
        if st.query_params.get("runs"):
            st.session_state["runs_selected"] = st.query_params["runs"].split(",")
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
    remembered = [i for i in st.session_state.get("runs_selected", []) if i in ids]
    event = st.dataframe(display, key=f"runs_table_{digest}", on_select="rerun", selection_mode="multi-row",
                         hide_index=True, height=min(420, 38 + 35 * len(display)),
                         selection_default={"selection": {"rows": [ids.index(i) for i in remembered]}},
                         column_config={"run": st.column_config.TextColumn("run", width="medium"),
                                        "started": st.column_config.DatetimeColumn("started (UTC)",
                                                                                   format="YYYY-MM-DD HH:mm"),
                                        "duration_s": st.column_config.NumberColumn("duration (s)"),
                                        "status": st.column_config.TextColumn(
                                            "status", help="MLflow's status; DIED: the run still says RUNNING "
                                            "but its process is gone (killed, crashed). `--resume` continues it."),
                                        "run_id": st.column_config.TextColumn("run id", width="small")})
    picked = [ids[i] for i in event.selection.rows if i < len(ids)]
    st.session_state["runs_selected"] = picked
    if picked:
        st.query_params["runs"] = ",".join(picked)  # the address bar now links to this comparison
    elif "runs" in st.query_params:
        del st.query_params["runs"]
    if st.toggle("Include the runs of a selected study", value=True, key="runs_with_children"):
        picked = R.with_children(grouped, picked)
    return picked


def curves_tab(sel, version: int) -> None:
    data = load_curves(tuple(sel["run_id"]), version, sel)
    keys = sorted(k for k in data["key"].unique() if k != "epoch")
    if not keys:
        st.info("These runs logged no metrics.")
        return
    c1, c2 = st.columns([4, 1])
    default = [k for k in keys if "loss" in k][:2] or keys[:1]
    chosen = c1.multiselect("Metrics", keys, default=default, key="runs_metrics")
    x = c2.radio("x axis", ["step", "epoch"], horizontal=True, key="runs_x",
                 help="epoch: steps divided by the run's steps per epoch (or mapped through its logged "
                      "epoch metric); for runs that log once per epoch the two agree.")
    cols = st.columns(2) if len(chosen) > 1 else [st.container()]
    for i, key in enumerate(chosen):
        cols[i % len(cols)].plotly_chart(run_curves_figure(data, key, x=x), key=f"runs_curve_{key}")


def params_tab(sel) -> None:
    table = R.params_table(sel)
    if table.empty:
        st.info("These runs logged no params.")
        return
    diff = R.differing(table)
    n = int(diff.sum())
    only = st.toggle("Only the params that differ", value=False, key="runs_only_diff", disabled=len(sel) < 2)
    st.caption(f"{n} of {len(table)} params differ (highlighted)." if len(sel) > 1 else "Select two or more runs "
               "to see what differs.")
    shown = table[diff] if only else table
    styler = shown.style.apply(lambda row: [DIFF_STYLE if diff[row.name] else ""] * len(row), axis=1)
    st.dataframe(styler, key="runs_params", height=min(600, 38 + 35 * len(shown)))


def metrics_tab(sel, version: int) -> None:
    data = load_curves(tuple(sel["run_id"]), version, sel)
    summary = R.metrics_summary(sel, data[["run_id", "key", "step", "value"]])
    if summary.empty:
        st.info("These runs logged no metrics.")
        return
    st.caption("final: the value at the last step · best: min or max over all steps, by the metric's name "
               "(empty when the name does not say which is better).")
    st.dataframe(R.metrics_wide(summary), key="runs_metrics_table")
    with st.expander("As a long table (with the steps)"):
        st.dataframe(summary.drop(columns=["run_id"]), hide_index=True, key="runs_metrics_long")


def images_tab(sel) -> None:
    labels = R.run_labels(sel)
    found = {rid: load_images(rid) for rid in sel["run_id"]}
    folders = sorted({f for series, _ in found.values() for f in series})
    if folders:
        folder = st.selectbox("Image series", folders, key="runs_img_series", format_func=lambda f: f or "(top level)",
                              help="Artifacts with an epoch in their file names, e.g. the GAN's fixed-noise grids.")
        series = {rid: found[rid][0].get(folder, []) for rid in sel["run_id"]}
        epochs = R.shared_epochs(series.values())
        if len(epochs) > 1:
            epoch = st.select_slider("Epoch (shared by all runs)", epochs, value=epochs[-1], key="runs_epoch")
        else:
            epoch = epochs[0]
            st.caption(f"Epoch {epoch} (the only one logged).")
        cols = st.columns(min(4, len(sel)))
        for i, rid in enumerate(sel["run_id"]):
            with cols[i % len(cols)]:
                hit = R.image_at(series[rid], epoch)
                if hit is None:
                    st.caption(f"**{labels[rid]}**: no images in this series.")
                    continue
                e, path = hit
                note = "" if e == epoch else f" (its nearest: epoch {e})"
                st.image(image_bytes(rid, path), caption=f"{labels[rid]} · epoch {epoch}{note}", width="stretch")
    others = {rid: found[rid][1] for rid in sel["run_id"] if found[rid][1]}
    if others:
        with st.expander(f"Other images ({sum(map(len, others.values()))})", expanded=not folders):
            for rid, paths in others.items():
                st.markdown(f"**{labels[rid]}**")
                cols = st.columns(min(4, len(paths)))
                for i, p in enumerate(paths[:12]):
                    cols[i % len(cols)].image(image_bytes(rid, p), caption=p, width="stretch")
    if not folders and not others:
        st.info("These runs logged no images.")


def report_tab(sel) -> None:
    ids = tuple(sel["run_id"])
    st.caption("One HTML file: interactive charts (plotly.js inside, so it opens offline), tables, sample grids, "
               "configs, dataset hashes and code versions. Also `python -m core report --run RUN_ID --out FILE.html`.")
    if st.button("Build the report", icon=":material/description:", key="runs_report_build"):
        from core.report import build_report

        bar = st.progress(0.0, text="Reading runs…")
        html = build_report(ids, include_children=False,
                            on_progress=lambda d, t, m: bar.progress(d / t, text=m))
        bar.empty()
        st.session_state["runs_report"] = (ids, html)
    built = st.session_state.get("runs_report")
    if built and built[0] == ids:
        st.download_button("Download report (HTML)", built[1], file_name=f"medaug-report-{date.today()}.html",
                           mime="text/html", icon=":material/download:", key="runs_report_download",
                           on_click="ignore")
        st.caption(f"{len(built[1].encode()) / 2**20:.1f} MB")


def manage_tab(sel) -> None:
    labels = R.run_labels(sel)
    left, right = st.columns(2)
    with left:
        st.markdown("**Rename**")
        rid = st.selectbox("Run", list(sel["run_id"]), format_func=labels.get, key="runs_rename_pick")
        new = st.text_input("New name", key="runs_rename_to")
        if st.button("Rename…", key="runs_rename", disabled=not new.strip()):
            st.session_state["runs_pending"] = ("rename", (rid,), new.strip())
    with right:
        st.markdown("**Delete**")
        st.caption(R.TRASH_NOTE)
        if st.button(f"Move {len(sel)} run(s) to the trash…", key="runs_delete", icon=":material/delete:"):
            st.session_state["runs_pending"] = ("delete", tuple(sel["run_id"]), None)
    pending = st.session_state.get("runs_pending")
    if not pending:
        return
    action, ids, name = pending
    names = ", ".join(labels.get(i, i) for i in ids)
    with st.container(border=True):
        if action == "rename":
            st.warning(f"Rename **{names}** to **{name}**?", icon=":material/edit:")
        else:
            st.warning(f"Move **{len(ids)} run(s)** to the MLflow trash: {names}? They disappear from this "
                       "list and can be restored from the trash (toggle *Show the trash* above).",
                       icon=":material/delete:")
        yes, no = st.columns(2)
        yes.button("Yes, " + ("rename" if action == "rename" else "move to the trash"), type="primary",
                   key="runs_confirm", on_click=confirm_pending, args=(labels,))
        no.button("Cancel", key="runs_cancel", on_click=lambda: st.session_state.pop("runs_pending", None))


def confirm_pending(labels: dict) -> None:
    """The confirmed rename or delete (a button callback: it runs before the page redraws)."""
    action, ids, name = st.session_state.pop("runs_pending")
    try:
        if action == "rename":
            R.rename_run(ids[0], name)
            flash("success", f"Renamed {labels.get(ids[0], ids[0])} to {name}.")
        else:
            R.delete_runs(ids)
            st.session_state["runs_selected"] = []
            flash("success", f"{len(ids)} run(s) moved to the trash; *Show the trash* lists them for restoring.")
    except ValueError as e:
        flash("error", str(e))
    bump()


def restore(ids: tuple[str, ...], labels: dict) -> None:
    R.restore_runs(ids)
    st.session_state["runs_selected"] = []
    flash("success", f"Restored {', '.join(labels.get(i, i) for i in ids)}.")
    bump()


def flash(kind: str, text: str) -> None:
    """A message for the next redraw of the page."""
    st.session_state["runs_flash"] = (kind, text)


def show_flash() -> None:
    kind, text = st.session_state.pop("runs_flash", (None, None))
    if kind == "success":
        st.success(text, icon=":material/check:")
    elif kind:
        st.error(text)


def trash_actions(sel) -> None:
    st.button(f"Restore {len(sel)} run(s)", key="runs_restore", icon=":material/restore_from_trash:",
              on_click=restore, args=(tuple(sel["run_id"]), R.run_labels(sel)))


def mlflow_ui(sel) -> None:
    with st.popover("MLflow UI", icon=":material/open_in_new:"):
        st.markdown(f"[Compare these runs in MLflow]({R.mlflow_compare_url(sel)})")
        if tracking.tracking_uri().startswith("sqlite:"):
            st.caption("MLflow's UI for this same store, started with:")
            st.code(tracking.mlflow_ui_command(), language="bash", wrap_lines=True)


def main() -> None:
    if not store_reachable():
        return
    show_flash()
    if not R.store_exists():
        getting_started()
        return
    version = st.session_state.get("runs_version", 0)
    top = st.columns([3, 1, 1], vertical_alignment="bottom")
    trash = top[1].toggle("Show the trash", key="runs_trash", help="Runs moved to the trash (restorable).")
    if top[2].button("Refresh", icon=":material/refresh:", key="runs_refresh",
                     help="The listing is kept for up to 2 minutes; Refresh reads the store again."):
        bump()
        version = st.session_state["runs_version"]
    try:
        table, seconds = load_runs(tracking.tracking_uri(), trash, version)
    except Exception as e:  # noqa: BLE001 (a server failing mid-way: say so, never a traceback)
        st.error(f"Could not read runs from {tracking.tracking_uri()}: {type(e).__name__}: {str(e)[:300]}")
        return
    if table.empty:
        if trash:
            st.info("The trash is empty.")
        else:
            getting_started()
        return
    if trash:
        st.info(R.TRASH_NOTE + " Select runs below and restore them.", icon=":material/delete:")
    f = filters(table)
    shown = R.filter_runs(table, f)
    top[0].caption(f"{len(shown)} of {len(table)} {'deleted ' if trash else ''}runs shown · listed in "
                   f"{seconds:.2f} s · select rows to compare them")
    if shown.empty:
        st.info("No runs match these filters.")
        return
    picked = listing(shown)
    if not picked:
        st.caption("Select runs in the table (tick the boxes at the left) to compare them.")
        return
    sel = table.set_index("run_id").loc[[p for p in picked if p in set(table["run_id"])]].reset_index()
    head = st.columns([4, 1], vertical_alignment="center")
    head[0].subheader(f"{len(sel)} run(s) selected")
    with head[1]:
        mlflow_ui(sel)
    if trash:
        trash_actions(sel)
        return
    tabs = st.tabs(["Curves", "Params", "Metrics", "Images", "Report", "Rename / delete"])
    with tabs[0]:
        curves_tab(sel, version)
    with tabs[1]:
        params_tab(sel)
    with tabs[2]:
        metrics_tab(sel, version)
    with tabs[3]:
        images_tab(sel)
    with tabs[4]:
        report_tab(sel)
    with tabs[5]:
        manage_tab(sel)


main()
