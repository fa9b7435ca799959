"""Reader study page: a visual Turing test. Set up a blinded mix of real and synthetic images, read
them one at a time (keyboard: ← real, → synthetic, 1-5 confidence, Backspace back), and see per reader
and per generator whether people tell them apart better than chance. All logic is in core.reader_study;
answers are on disk, so a reload (or another day) continues at the next unanswered image."""
import time
from pathlib import Path

import streamlit as st

from core import reader_study as rs
from core.charts import reader_study_figure
from pages import ui

SECTIONS = ("Read", "Set up", "Results")

ds = ui.setup("Reader study")
st.title("Reader study: real or synthetic?")
st.caption("A visual Turing test. Readers see real and generated images of the chosen classes in a random, blinded "
           "order (no names, ids or captions) and answer **real** or **synthetic**, optionally with the class they see "
           "and their confidence. Chance is 50%.")

studies = rs.list_studies()
section = st.segmented_control("Section", SECTIONS, key="rd_section", default="Read" if studies else "Set up",
                               required=True, label_visibility="collapsed")


def pick_study(where=st) -> rs.ReaderStudy | None:
    if not studies:
        where.info("No reader study yet: create one under **Set up**.")
        return None
    by_id = {s.id: s for s in studies}
    if (st.session_state.get("rd_study") or st.query_params.get("rd_study")) not in by_id:
        st.session_state["rd_study"] = studies[0].id
    # bound to the URL (?rd_study=...&rd_reader=...), so a reload keeps the study and the reader
    picked = where.selectbox("Study", list(by_id), key="rd_study", format_func=lambda i: by_id[i].label,
                          bind="query-params")
    return by_id[picked]


# --- set up -------------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, ttl=10)
def dataset_folders(active: str) -> tuple[list[str], list[dict]]:
    """Real dataset folders (``active`` first) and synthetic sets in the workspace."""
    import json

    from core.quality.report import synthetic_sets
    from core.workspace import workspace_dir

    real = [active]
    for meta in sorted(workspace_dir("datasets").glob("*/dataset.json")):
        try:
            kind = json.loads(meta.read_text()).get("kind")
        except (OSError, ValueError):
            continue
        if kind != "synthetic" and str(meta.parent.resolve()) not in real:
            real.append(str(meta.parent.resolve()))
    return real, synthetic_sets()


def setup_form() -> None:
    real, sets = dataset_folders(str(ds.root))
    if not sets:
        st.info("No synthetic set in the workspace yet: generate one on the GAN page (or `python -m core generate`).")
        return
    labels = {s["path"]: s["label"] for s in sets}
    real_root = st.selectbox("Real images from", real, key="rd_real", format_func=lambda p: Path(p).name)
    chosen = st.multiselect("Synthetic sets (each generator in them is one arm of the study)", list(labels),
                            default=list(labels)[:2], key="rd_sets", format_func=labels.get)
    import json

    offered = list(dict.fromkeys(c for p in chosen for c in json.loads((Path(p) / "dataset.json").read_text())
                                 .get("classes", [])))
    classes = st.multiselect("Classes", offered, default=offered, key="rd_classes",
                             help="Real and synthetic images are spread evenly over these classes.")
    c1, c2, c3, c4 = st.columns(4)
    per_source = c1.number_input("Images per generator", 1, 1000, 20, key="rd_n_syn")
    n_real = c2.number_input("Real images (0: matched)", 0, 5000, 0, key="rd_n_real",
                             help="0 (recommended): each generator's images are paired with as many real images of "
                                  "the same classes, so chance is 50% overall and per generator. A number draws that "
                                  "many real images spread over the classes instead.")
    split = c3.selectbox("Real images' split", rs.SPLITS, key="rd_split",
                         help="test (default): images no generator was trained on and no reader has seen in training.")
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="rd_seed")
    if st.button("Create study", type="primary", icon=":material/add:", key="rd_create", disabled=not chosen):
        try:
            study = rs.create_study(real_root, chosen, classes, int(n_real) or None, int(per_source), int(seed),
                                    real_split=split)
        except ValueError as e:
            st.error(str(e), icon=":material/error:")
            return
        st.session_state["rd_study"] = study.id
        st.success(f"Created study {study.id}: {study.meta['n_real']} real and {study.meta['n_synthetic']} synthetic "
                   f"images at {study.meta['config']['size']} px. Readers open **Read** and enter their name.",
                   icon=":material/check:")


# --- read ---------------------------------------------------------------------------------------------

def set_confidence(value: int) -> None:
    st.session_state["rd_conf"] = None if st.session_state.get("rd_conf") == value else value


def answer(study: rs.ReaderStudy, reader: str, token: str, value: str, class_key: str) -> None:
    shown = st.session_state.setdefault("rd_shown", {})
    seconds = time.monotonic() - shown.pop(token, time.monotonic())
    try:
        rs.record_answer(study, reader, token, value, st.session_state.get(class_key), st.session_state.get("rd_conf"),
                         seconds=seconds)
    except ValueError as e:
        st.session_state["rd_error"] = str(e)
        return
    st.session_state["rd_conf"] = None
    st.session_state.pop("rd_back", None)


def go_back(position: int) -> None:
    st.session_state["rd_back"] = max(0, position - 1)
    st.session_state["rd_conf"] = None


def reading(study: rs.ReaderStudy, name_slot) -> None:
    reader = name_slot.text_input("Your name", key="rd_reader", placeholder="name or initials", bind="query-params",
                           help="Each reader's answers are kept apart; the same name continues where it stopped.")
    if not reader.strip():
        st.info("Enter your name to start reading.")
        return
    try:
        prog = rs.progress(study, reader)
    except ValueError as e:
        st.error(str(e), icon=":material/error:")
        return
    if error := st.session_state.pop("rd_error", None):
        st.error(error, icon=":material/error:")
    back = st.session_state.get("rd_back")
    position = back if back is not None and back < prog.total else prog.position
    st.progress(prog.done / prog.total, text=f"{prog.done} / {prog.total}")
    if position >= prog.total:
        st.success(f"All {prog.total} images read. Thank you! Your answers are saved.", icon=":material/task_alt:")
        if st.button("Back to the last image", key="rd_back_btn", icon=":material/undo:", shortcut="Backspace"):
            st.session_state["rd_back"] = prog.total - 1
            st.rerun()
        return
    token = prog.order[position]
    st.session_state.setdefault("rd_shown", {}).setdefault(token, time.monotonic())
    left, right = st.columns([3, 2], gap="large")
    left.image(study.image_path(token).read_bytes(), width=480)
    with right:
        if token in prog.answered:
            st.caption(f"You answered **{prog.answered[token]['answer']}** here; a new answer replaces it.")
        st.markdown("**Real or synthetic?**")
        a, b = st.columns(2)
        class_key = f"rd_class_{position}"
        a.button("Real", key="rd_real_btn", shortcut="Left", width="stretch", icon=":material/person:",
                 on_click=answer, args=(study, reader, token, "real", class_key))
        b.button("Synthetic", key="rd_syn_btn", shortcut="Right", width="stretch", icon=":material/smart_toy:",
                 type="primary", on_click=answer, args=(study, reader, token, "synthetic", class_key))
        st.markdown("**Confidence** (optional)")
        conf = st.session_state.get("rd_conf")
        for i, col in enumerate(st.columns(5), start=1):
            col.button(str(i), key=f"rd_conf_{i}", shortcut=str(i), width="stretch",
                       type="primary" if conf == i else "secondary", on_click=set_confidence, args=(i,))
        st.caption("1 = guessing … 5 = sure")
        st.selectbox("Class you see (optional)", [None, *study.classes], key=class_key,
                     format_func=lambda c: "— not sure —" if c is None else c)
        st.button("Back", key="rd_back_btn", icon=":material/undo:", shortcut="Backspace", disabled=position == 0,
                  on_click=go_back, args=(position,))
        st.caption("Keyboard: **←** real · **→** synthetic · **1–5** confidence (before the answer) · "
                   "**Backspace** previous image. Keys do nothing while a text or class box has the focus: "
                   "click the image to leave it.")


# --- results ------------------------------------------------------------------------------------------

def results(study: rs.ReaderStudy) -> None:
    try:
        scores = rs.score(study)
    except ValueError as e:
        st.error(str(e), icon=":material/error:")
        return
    if scores.readers.empty:
        st.info("No answers yet: readers answer under **Read**.")
        return
    st.caption("Readers who have not finished should not look here.")
    for row in scores.readers.to_dict("records"):
        (st.success if row["beat_chance"] else st.info)(f"**{row['reader']}** {row['verdict']}")
    st.plotly_chart(reader_study_figure(scores.readers, scores.generators), key="rd_chart")
    st.markdown("**Per reader**")
    st.dataframe(rs.display_table(scores.readers), hide_index=True, key="rd_readers_table")
    st.markdown("**Per generator** (its images and its real partners: real images of the same classes)")
    st.dataframe(rs.display_table(scores.generators), hide_index=True, key="rd_generators_table")
    st.caption("95% Wilson intervals; p: exact two-sided binomial test against 50%. Sensitivity: synthetic images "
               "called synthetic; specificity: real images called real; class agreement: on synthetic images, the "
               "reader's class equals the class the generator was asked for.")
    if st.button("Log to MLflow", key="rd_log", icon=":material/cloud_upload:"):
        try:
            run_id = rs.log_study(study)
        except ValueError as e:
            st.error(str(e), icon=":material/error:")
        else:
            st.success(f"Logged as MLflow run `{run_id}` (kind reader-study), with the answer key as an artifact. "
                       "The Runs page lists it; its HTML report shows these tables.", icon=":material/check:")


if section == "Set up":
    setup_form()
elif section == "Read":
    study_slot, name_slot = st.columns([3, 2])
    picked = pick_study(study_slot)
    if picked is not None:
        reading(picked, name_slot)
else:
    picked = pick_study()
    if picked is not None:
        results(picked)
