"""Quality page: score GAN runs and synthetic sets against the active (real) dataset: per-image
SSIM/PSNR against the nearest real image, FID/KID/precision-recall with intervals, fidelity over
training, and the memorization audit. The scoring runs as a background `quality` job."""
from pathlib import Path

import streamlit as st

from core import jobs
from core.charts import (
    QUALITY_METRIC_NAMES,
    memorization_figure,
    quality_distribution_figure,
    quality_epochs_figure,
    quality_sets_figure,
)
from core.quality import choices as qc
from core.quality import report as qr
from pages import ui

ds = ui.setup("Quality")
st.title("Image quality")
ui.synthetic_badge(ds)
st.caption(f"Real reference: the **train split** of `{ds.id}`. Each synthetic image is compared with its nearest "
           "real training image of the same class, nearest in the feature space of the chosen extractor.")


@st.cache_data(show_spinner=False, ttl=10)
def sources() -> tuple[list[dict], list[dict]]:
    return qr.gan_runs(), qr.synthetic_sets()


@st.cache_data(show_spinner=False)
def inception_file() -> str | None:
    from core.quality.features import find_inception_weights

    try:
        path = find_inception_weights()
    except ValueError as e:
        return f"error: {e}"
    return str(path) if path else None


def evaluate_form() -> None:
    runs, sets = sources()
    options = {f"GAN run · {r['label']}": r["out"] for r in runs}
    options |= {f"Synthetic set · {s['label']}": s["path"] for s in sets}
    if not options:
        st.info("Nothing to score yet: train a GAN on the GAN page (finished runs appear here), or generate a "
                "synthetic set there.")
        return
    picked = st.multiselect("Synthetic sets and GAN runs to compare", list(options), key="q_sources",
                            default=list(options)[:2],
                            help="A GAN run is sampled per class from its final checkpoint; a synthetic set is "
                                 "scored as it is.")
    with_grids = {r["label"]: r["out"] for r in runs if r["grids"] > 1}
    left, mid, right = st.columns(3)
    epoch_run = left.selectbox("Fidelity over training (one run)", ["— none —", *with_grids], key="q_epochs",
                               help="Scores each epoch's fixed-noise sample grid of that run.")
    weights = inception_file()
    extractors = ["domain", "inception"] if weights and not weights.startswith("error") else ["domain"]
    extractor = mid.radio("Feature extractor", extractors, key="q_extractor", horizontal=True,
                          format_func=lambda e: {"domain": "Domain encoder (trained on this dataset)",
                                                 "inception": "Inception-v3 (local weights)"}[e])
    if len(extractors) == 1:
        mid.caption("Inception-v3 needs a local weights file (MEDAUG_INCEPTION_WEIGHTS or the torch hub cache)."
                    + (f" {weights[7:]}" if weights else ""))
    n_per_class = right.number_input("Images per class from a GAN run", 8, 2000, 64, step=8, key="q_n")
    boot = right.number_input("Bootstrap resamples (intervals)", 0, 1000, 50, step=10, key="q_boot")
    with st.expander("Advanced"):
        a1, a2 = st.columns(2)
        enc_epochs = a1.number_input("Domain encoder epochs", 1, 200, 8, key="q_enc_epochs",
                                     help="Trained once per dataset and cached in the workspace.")
        pairs = a2.number_input("Pairs for the diversity MS-SSIM", 10, 5000, 200, step=10, key="q_div_pairs")
    config = {"real": str(ds.root), "extractor": extractor, "n_per_class": int(n_per_class), "n_boot": int(boot),
              "encoder_epochs": int(enc_epochs), "diversity_pairs": int(pairs), "out": "{job_dir}",
              "synthetic": [options[label] for label in picked],
              "epochs_of": with_grids[epoch_run] if epoch_run != "— none —" else None}
    job = ui.launch_button("quality", config, "Evaluate", icon=":material/insights:", key="q_go",
                           label=f"quality · {len(picked)} set(s)", disabled=not picked)
    if job is not None:
        st.session_state["q_report_job"] = job.id   # Results opens its report once there is one
        st.toast(f"Quality job {job.id} {job.state}.", icon=":material/insights:")
    quality_jobs = [j for j in jobs.list_jobs() if j.command == "quality"][:3]
    active = any(j.active for j in quality_jobs)

    @st.fragment(run_every=2.0 if active else None)
    def progress() -> None:
        for j in [jobs.get_job(j.id) for j in quality_jobs]:
            with st.container(border=True):
                ui.job_progress(j)
                if j.active and j.status.get("message"):
                    st.caption(j.status["message"])
        if active and not any(jobs.get_job(j.id).active for j in quality_jobs):
            st.rerun()

    progress()


@st.cache_data(show_spinner="Loading the report…", max_entries=16)
def load(choice: qc.ReportChoice) -> qr.Report:
    return qc.load_choice(choice)


SET_TABLE_COLUMNS = ("set", "extractor", "n_synthetic", "n_real", "fid", "kid", "precision", "recall", "mean_ssim",
                     "mean_psnr", "mean_ms_ssim", "diversity_synthetic", "diversity_real", "flagged")


def set_table(rep: qr.Report) -> None:
    s = rep.sets.copy()

    def ci(m: str, fmt: str) -> list[str]:
        return [f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" for v, lo, hi in zip(s[m], s[f"{m}_lo"], s[f"{m}_hi"])]

    table = {"set": s["set"], "extractor": s["extractor"], "images": s["n_synthetic"], "real": s["n_real"],
             "FID [95% CI]": ci("fid", ".4g"), "KID [95% CI]": ci("kid", ".3g"), "precision [95% CI]": ci("precision", ".2f"),
             "recall [95% CI]": ci("recall", ".2f"), "mean SSIM": s["mean_ssim"].round(3),
             "mean PSNR (dB)": s["mean_psnr"].round(2), "mean MS-SSIM": s["mean_ms_ssim"].round(3),
             "diversity (synthetic)": s["diversity_synthetic"].round(3), "diversity (real)": s["diversity_real"].round(3),
             "near-copies": s["flagged"]}
    st.dataframe(table, hide_index=True, key="q_sets_table")
    st.caption(f"**Extractor:** {rep.summary.get('extractor_description')}. FID/KID/precision/recall use its features; "
               "diversity is the mean pairwise MS-SSIM inside a set (a collapsed GAN scores near 1). Intervals: "
               f"percentile bootstrap. Images compared at {rep.summary.get('size')} px.")
    warned = qc.set_warnings(s)
    if warned.small:
        small = warned.small
        st.warning(f"Small sets: {small.n_min}–{small.n_max} synthetic images per set for {small.feature_dim}-d "
                   f"features. FID needs about 2,000 images (and more images than feature dimensions) to be "
                   f"stable and is biased upwards below that: compare only sets of the same size, and read the "
                   f"intervals.", icon=":material/warning:")
    for w in warned.notes[:3]:
        st.warning(w, icon=":material/warning:")


def memorization_panel(rep: qr.Report) -> None:
    st.subheader("Memorization audit")
    flagged = int(rep.sets["flagged"].sum())
    threshold = rep.sets["memorization_threshold"].min()
    st.caption(f"A synthetic image is a **near-copy** when its feature distance to the nearest training image is below "
               f"{threshold:.4g}: under the 1% quantile of real-to-real nearest-neighbour distances and a third of "
               f"their median. Generated images must not leak patient images.")
    left, right = st.columns([2, 3])
    left.plotly_chart(memorization_figure(rep.memorization, rep.sets), key="q_mem_chart")
    with right:
        if flagged:
            st.error(f"{flagged} near-cop{'y' if flagged == 1 else 'ies'} flagged.", icon=":material/content_copy:")
        else:
            st.success("No near-copies flagged. The closest pairs are shown for a visual check.",
                       icon=":material/verified_user:")
        pairs = rep.pairs
        if pairs.empty:
            return
        pairs = pairs.sort_values(["flagged", "distance"], ascending=[False, True])
        pick = st.selectbox("Set", list(dict.fromkeys(pairs["set"])), key="q_pairs_set")
        shown = pairs[pairs["set"] == pick].head(6)
        cols = st.columns(3)
        for i, row in enumerate(shown.to_dict("records")):
            tag = "FLAGGED near-copy" if row["flagged"] else "closest, not flagged"
            cols[i % 3].image(str(Path(rep.folder) / row["file"]), width="stretch",
                              caption=f"{tag} · synthetic (left) vs real {row['train_id']} (right) · {row['class']} · "
                                      f"d={row['distance']:.3g}")


def results() -> None:
    choices = qc.report_choices()
    if not choices:
        st.info("No quality reports yet: pick sets above and press Evaluate.")
        return
    launched = st.session_state.pop("q_report_job", None)   # a job launched above: its report, once it has one
    if launched and qc.choice_of_job(choices, launched):
        st.session_state["q_report_pick"] = qc.choice_of_job(choices, launched)
    if st.session_state.get("q_report_pick") not in choices:
        st.session_state["q_report_pick"] = choices[0]
    choice = st.selectbox("Report", choices, key="q_report_pick", format_func=lambda c: c.label)
    try:
        rep = load(choice)
    except (ValueError, OSError) as e:
        st.error(f"Cannot read this report: {e}")
        return
    if rep.sets.empty and rep.epochs.empty:
        st.info("This report holds no sets.")
        return
    missing = [c for c in SET_TABLE_COLUMNS if c not in rep.sets] if not rep.sets.empty else []
    if missing:
        st.error(f"{choice.label}: its sets.csv lacks {', '.join(missing)} (written by another version?); run the "
                 f"evaluation again to rebuild it.")
        return
    if not rep.sets.empty:
        st.subheader("Set metrics")
        set_table(rep)
        st.plotly_chart(quality_sets_figure(rep.sets), key="q_sets_chart")
        st.subheader("Per-image metrics against the nearest real image")
        c1, c2 = st.columns([3, 1])
        metric = c2.selectbox("Metric", [m for m in QUALITY_METRIC_NAMES if m in rep.per_image], key="q_metric",
                              format_func=QUALITY_METRIC_NAMES.get)
        kind = c2.radio("Plot", ["violin", "box"], key="q_kind", horizontal=True)
        c1.plotly_chart(quality_distribution_figure(rep.per_image, metric, ds.classes, kind), key="q_dist_chart")
    if not rep.epochs.empty:
        st.subheader("Fidelity over training")
        st.plotly_chart(quality_epochs_figure(rep.epochs, f"Fidelity over training: {Path(str(rep.summary.get('epochs_of'))).name} "
                                                          f"({int(rep.epochs['n_synthetic'].iloc[0])} fixed-noise samples "
                                                          f"per epoch)"), key="q_epochs_chart")
    if not rep.sets.empty:
        memorization_panel(rep)


def reader_studies() -> None:
    """The human judgement beside the metrics: each reader study's verdicts, chart and table."""
    from core import reader_study as rs
    from core.charts import reader_study_figure

    st.subheader("Reader studies: can people tell them apart?")
    st.page_link("pages/reader.py", label="Set up a study or read on the Reader study page",
                 icon=":material/visibility:")
    studies = [s for s in rs.list_studies() if not rs.answers_table(s).empty]
    if not studies:
        st.caption("No reader study with answers yet.")
        return
    by_id = {s.id: s for s in studies}
    picked = st.selectbox("Reader study", list(by_id), key="q_reader_study", format_func=lambda i: by_id[i].label)
    scores = rs.score(by_id[picked])
    st.markdown("\n".join(f"- **{r['reader']}** {r['verdict']}" for r in scores.readers.to_dict("records")))
    st.plotly_chart(reader_study_figure(scores.readers, scores.generators), key="q_reader_chart")
    st.dataframe(rs.display_table(scores.readers), hide_index=True, key="q_reader_table")


with st.container(border=True):
    st.markdown("**Evaluate**")
    evaluate_form()
results()
reader_studies()
