"""Dataset page: import data (server folder or upload -> prepare), the active dataset's class
balance and card, its load report, a sample grid per class with lesion boxes, image details."""
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.charts import class_balance_figure
from core.data.cache import box_to_cache
from core.data.datasets import imbalance_ratio
from core.data.io import read_image, to_uint8
from core.images import draw_boxes
from pages import ui

ds = ui.setup("Dataset")
st.title("Dataset")
ui.synthetic_badge(ds)
st.caption(ds.meta.get("description", ""))


def run_prepare(source: str, root: Path, name: str, size: int, label_mode: str, window: str) -> None:
    """Prepare ``root`` into workspace/datasets/<name> with a progress bar, then make it active."""
    from core.data.prepare import PrepareConfig, prepare
    from core.workspace import workspace_dir

    config = PrepareConfig(source=source, root=str(root), out=str(workspace_dir("datasets") / name), size=size,
                           label_mode=label_mode, window=window)
    bar = st.progress(0.0, text="Scanning the files and starting the workers…")
    try:
        result = prepare(config, on_progress=lambda d, t, m: bar.progress(min(1.0, d / t) if t else 1.0,
                                                                          text=f"{d}/{t} files · {m}"))
    except (ValueError, OSError) as e:  # our messages say what to do; OSError: disk full, permissions
        bar.empty()
        st.error(str(e), icon=":material/error:")
        return
    bar.empty()
    st.session_state["import_done"] = str(result.dataset.root), (
                                       f"Prepared **{len(result.dataset.manifest):,}** images into `{name}` in "
                                       f"{result.seconds} s ({result.prepared} decoded, {result.reused} reused, "
                                       f"{result.skipped} skipped, {len(result.problems)} row(s) in the load report).")
    st.session_state["dataset_dir"] = str(result.dataset.root)
    st.rerun()


def import_section() -> None:
    from core.data.folders import (
        FolderAccessError,
        ZipRefused,
        allowed_data_roots,
        dataset_name,
        detect_source,
        resolve_server_folder,
        staged_upload,
    )

    with st.expander("Import data: VinDr-SpineXR folder, image folder or upload",
                     expanded=bool(st.session_state.get("import_open")), icon=":material/upload:"):
        where = st.segmented_control("Import from", ["Server folder", "Upload"], default="Server folder",
                                     key="import_from")
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Dataset name", key="import_name", placeholder="e.g. vindr-256",
                             help="Folder under workspace/datasets/; an interrupted import with the same name resumes")
        size = c2.selectbox("Image size (px)", [128, 256, 384, 512], index=1, key="import_size")
        label_mode = c3.selectbox("Labels", ["single", "multi", "patch"], key="import_label_mode",
                                  help="single: one finding per image plus normals · multi: every finding · "
                                       "patch: crops around lesion boxes")
        window = c4.selectbox("DICOM window", ["voi", "percentile", "none"], key="import_window",
                              help="voi: the header's window · percentile: 0.5-99.5 % · none: full stored range")
        if where == "Upload":
            files = st.file_uploader("Image files (PNG, JPEG, TIFF, DICOM) or one zip of <class>/<file> or a "
                                     "VinDr layout", accept_multiple_files=True, key="import_files")
            class_name = st.text_input("Class of the uploaded images (not needed for a zip)", key="import_class")
        else:
            roots = ", ".join(f"`{r}`" for r in allowed_data_roots())
            folder = st.text_input("Folder on the server", key="import_path",
                                   placeholder="…/vindr-spinexr or …/my-images")
            st.caption(f"Readable data roots: {roots} (add more with `MEDAUG_DATA_ROOTS`). A VinDr-SpineXR folder "
                       "has annotations/ and train_images/; an image folder has one sub-folder per class.")
        if not st.button("Prepare dataset", key="import_run", type="primary", icon=":material/play_arrow:"):
            return
        st.session_state["import_open"] = True
        try:
            name = dataset_name(name or "")
            source = (staged_upload([(f.name, f.getvalue()) for f in files or []], name, class_name)
                      if where == "Upload" else nullcontext(resolve_server_folder(folder)))
            with source as root:  # an upload is deleted when the import finishes or fails
                run_prepare(detect_source(root), root, name, size, label_mode, window)
        except (FolderAccessError, ZipRefused, ValueError, OSError) as e:  # OSError: disk full, permissions
            st.error(str(e), icon=":material/block:")


import_section()
done_root, done_text = st.session_state.get("import_done", ("", ""))
if done_root == str(ds.root):  # shown while the imported dataset is the active one
    st.success(done_text, icon=":material/check_circle:")

counts = ds.class_counts()
m = ds.manifest
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Images", f"{len(m):,}")
c2.metric("Classes", len(ds.classes))
c3.metric("Studies", f"{m['study_id'].nunique():,}")
c4.metric("Imbalance ratio", f"{imbalance_ratio(counts):.1f}:1", help="Largest class / smallest class")
c5.metric("Content hash", ds.content_hash[:8], help=ds.content_hash)

st.plotly_chart(class_balance_figure(ds.split_counts()), key="class_chart")
with st.expander("Images per class and split"):
    st.dataframe(ds.split_counts().assign(total=lambda t: t.sum(axis=1)), key="split_table")


def dataset_card(card: dict) -> None:
    """The card written by `prepare`: source sizes, bit depths, photometric mix, boxes per class."""
    st.subheader("Dataset card")
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Source files used", f"{card['source_files']:,}")
    w, h = card["source_width"], card["source_height"]
    k2.metric("Median source size", f"{w['median']:.0f} x {h['median']:.0f} px",
              help=f"width {w['min']}-{w['max']} px, height {h['min']}-{h['max']} px")
    k3.metric("Bit depth", " · ".join(f"{b}-bit: {n}" for b, n in card["bit_depth"].items()))
    k4.metric("Files skipped", card["files_skipped"], help="See the load report below")
    st.markdown("**Photometric:** " + " · ".join(f"{k} {n}" for k, n in card["photometric"].items())
                + " &nbsp; **Encoding:** " + " · ".join(f"{k} {n}" for k, n in card["transfer_syntax"].items()),
                help="MONOCHROME1 files are inverted on reading, so bone is bright in every image")
    t1, t2 = st.columns(2)
    t1.caption("Source image size (px)")
    t1.dataframe(pd.DataFrame({"width": w, "height": h}).T, key="card_sizes")
    t2.caption("Lesion boxes per class")
    t2.dataframe(pd.Series(card["boxes_per_class"], name="boxes", dtype=int), key="card_boxes")


def load_report() -> None:
    from core.data.prepare import REPORT_FILE, read_report

    report = read_report(ds.root / REPORT_FILE)
    if report.empty:
        st.caption("Load report: every source file was used, no problems found.")
        return
    with st.expander(f"Load report: {len(report)} problem(s), "
                     f"{int((report['outcome'] == 'file skipped').sum())} file(s) skipped", expanded=True,
                     icon=":material/report:"):
        st.dataframe(report, hide_index=True, key="load_report", width="stretch")


if ds.meta.get("card"):
    dataset_card(ds.meta["card"])
    load_report()


@st.dialog("Image", width="large")
def show_image(image_id: str) -> None:
    row = m.loc[m["image_id"] == image_id].iloc[0]
    left, right = st.columns([3, 2])
    pixels = to_uint8(read_image(ds.root / row["path"]))
    left.image(draw_boxes(pixels, row["boxes"], ds.classes), width="stretch")
    right.markdown(f"**{row['label']}**")
    right.table(pd.DataFrame({"value": [row["image_id"], row["split"], ", ".join(row["labels"]), row["study_id"],
                                        row["source"], f"{row['width']} x {row['height']} px", row["path"]]},
                             index=["image_id", "split", "labels", "study_id", "source", "size", "file"]))
    if row["boxes"]:
        right.caption("Boxes (pixels of the stored file)")
        right.table(pd.DataFrame(row["boxes"]).round(1))
    from core.data.sources_table import SourcesTableError, source_dicom

    try:
        source = source_dicom(ds, image_id)
    except SourcesTableError as e:   # a corrupt sources.csv: say so, the image itself is fine
        right.warning(str(e), icon=":material/warning:")
        source = None
    if source is not None:
        from core.data.dicom import dicom_header

        with st.expander(f"DICOM header of {source.name} (PHI masked)"):
            st.dataframe(pd.DataFrame(dicom_header(source)), hide_index=True, key="dicom_header")


@st.fragment
def sample_grid() -> None:
    st.subheader("Samples")
    f1, f2, f3, f4 = st.columns([4, 2, 2, 1], vertical_alignment="bottom")
    chosen = f1.multiselect("Classes", ds.classes, default=ds.classes, key="grid_classes")
    split = f2.segmented_control("Split", ["all", "train", "val", "test"], default="all", key="grid_split")
    per_class = f3.slider("Images per class", 2, 16, 8, key="grid_n")
    show_boxes = f4.toggle("Boxes", value=True, key="grid_boxes")
    seed = st.session_state.setdefault("grid_seed", 0)
    if st.button("Shuffle samples", icon=":material/shuffle:", key="grid_shuffle"):
        st.session_state["grid_seed"] = seed = seed + 1

    cache = ui.cached_pixels(ds, 256)
    rng = np.random.default_rng(seed)
    cols_per_row = 8
    for label in chosen:
        rows = m.index[(m["label"] == label) & ((m["split"] == split) | (split in (None, "all")))]
        st.markdown(f"**{label}** · {len(rows)} image(s)")
        if len(rows) == 0:
            st.caption("No images of this class in this split.")
            continue
        picked = rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        for start in range(0, len(picked), cols_per_row):
            cols = st.columns(cols_per_row)
            for col, i in zip(cols, picked[start:start + cols_per_row]):
                row = m.loc[i]
                boxes = [box_to_cache(b, row["width"], row["height"], cache.size) for b in row["boxes"]]
                col.image(draw_boxes(cache.array[i], boxes if show_boxes else [], ds.classes, labels=False),
                          width="stretch", output_format="PNG")
                if col.button("View", key=f"view_{row['image_id']}", icon=":material/zoom_in:", width="stretch"):
                    show_image(row["image_id"])


sample_grid()
