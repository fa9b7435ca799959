"""Augment: tune classic augmentations on one image, preview them, and build an augmented training set.

Widgets are generated from the registry (core.augment.ops.OPS); all logic lives in core.augment.
"""
import numpy as np
import streamlit as st

from core.augment.apply import AugmentConfig, augment_dataset, augmented_zip, default_output_dir, read_native
from core.augment.ops import OPS, describe_applied
from core.augment.pipeline import PRESETS, Pipeline, Step
from core.augment.preview import display_uint8, fit_working_size, preview_samples
from core.data.cache import box_to_cache
from core.data.io import ImageReadError
from core.images import draw_boxes
from pages import ui

STARTER = (("rotate", {"angle": 0.0, "jitter": 10.0, "interpolation": "bilinear"}, 0.8), ("hflip", {}, 0.5),
           ("gamma", {"gamma": (0.7, 1.4)}, 1.0))
state = st.session_state

ds = ui.setup("Augment")
st.title("Augmentation lab")
ui.synthetic_badge(ds)
st.caption("Build a pipeline from the registry of classic operations, see it on one image, then apply it to "
           "the training split. Every value under a sample is what that sample actually got.")


# --- pipeline state: a list of steps with stable ids, so widgets follow a step when it moves ---

def set_steps(steps) -> None:
    for key in [k for k in state if str(k).startswith("aug_s")]:
        del state[key]
    state["aug_steps"] = []
    for op, params, p in steps:
        add_step(op, params, p)


def add_step(op: str, params: dict | None = None, probability: float = 1.0) -> None:
    uid = state["aug_uid"] = state.get("aug_uid", 0) + 1
    state["aug_steps"].append({"uid": uid, "op": op, "params": OPS[op].validate(params), "p": probability})


def move_step(i: int, by: int) -> None:
    steps = state["aug_steps"]
    j = i + by
    if 0 <= j < len(steps):
        steps[i], steps[j] = steps[j], steps[i]


def load_preset() -> None:
    preset = PRESETS[state["aug_preset"]]()
    set_steps([(s.op, s.params, s.probability) for s in preset.steps])
    state["aug_mode"] = preset.mode


def load_json() -> None:
    upload = state.get("aug_json_upload")
    if upload is None:
        return
    try:
        loaded = Pipeline.from_json(upload.getvalue().decode("utf-8", "replace"), upload.name)
    except ValueError as e:
        state["aug_json_error"] = str(e)
        return
    state.pop("aug_json_error", None)
    set_steps([(s.op, s.params, s.probability) for s in loaded.steps])
    state["aug_mode"] = loaded.mode


if "aug_steps" not in state:
    set_steps(STARTER)
    state["aug_mode"] = "chain"


def param_widget(op_name: str, param, uid: int, value):
    key = f"aug_s{uid}_{param.name}"
    label = f"{param.name}" + (f" ({param.unit})" if param.unit else "")
    helptext = f"{param.help} Range {param.range_text()}."
    if param.kind == "bool":
        return st.toggle(label, value=value, key=key, help=helptext)
    if param.kind == "choice":
        return st.selectbox(label, param.choices, index=param.choices.index(value), key=key, help=helptext)
    if param.kind == "int":
        return st.slider(label, int(param.low), int(param.high), int(value), int(param.step or 1), key=key, help=helptext)
    return st.slider(label, float(param.low), float(param.high),
                     tuple(value) if param.kind == "float_range" else float(value),
                     float(param.step or 0.01), key=key, help=helptext)


def step_editor(i: int, step: dict, n: int) -> None:
    op = OPS[step["op"]]
    uid = step["uid"]
    with st.container(border=True):
        head, up, down, rm = st.columns([6, 1, 1, 1], vertical_alignment="center")
        head.markdown(f"**{i + 1}. {op.title}**", help=op.help)
        up.button("", icon=":material/arrow_upward:", key=f"aug_up_{uid}", on_click=move_step, args=(i, -1),
                  disabled=i == 0, help="Move up")
        down.button("", icon=":material/arrow_downward:", key=f"aug_down_{uid}", on_click=move_step, args=(i, 1),
                    disabled=i == n - 1, help="Move down")
        rm.button("", icon=":material/delete:", key=f"aug_rm_{uid}", help="Remove",
                  on_click=lambda: state["aug_steps"].remove(step))
        step["p"] = st.slider("probability", 0.0, 1.0, float(step["p"]), 0.05, key=f"aug_s{uid}_p",
                              help="Chance that this step runs (chain), or its weight (one of).")
        for param in op.params:
            step["params"][param.name] = param_widget(op.name, param, uid, step["params"][param.name])


def current_pipeline() -> Pipeline:
    steps = tuple(Step(s["op"], s["params"], s["p"]) for s in state["aug_steps"])
    return Pipeline(steps, state.get("aug_mode") or "chain", "lab")


# --- the image to try it on ---------------------------------------------------------------

def pick_image():
    """(uint8/uint16 image, boxes in its pixels, a caption)."""
    source = st.segmented_control("Image", ["Dataset", "Upload"], default="Dataset", key="aug_source")
    if source == "Upload":
        upload = st.file_uploader("Upload an image (PNG, JPEG or TIFF; 8 or 16 bit)",
                                  type=["png", "jpg", "jpeg", "tif", "tiff"], key="aug_upload")
        if upload is not None:
            try:
                image = read_native(upload)
            except ImageReadError as e:
                st.error(str(e))
                st.stop()
            return fit_working_size(image), [], f"{upload.name} (up to 512 px for the preview)"
        st.info("No upload yet; showing a dataset image.")
    m = ds.manifest
    with_boxes = [c for c in ds.classes if (m.loc[m["label"] == c, "boxes"].map(len) > 0).any()]
    c1, c2 = st.columns([2, 3])
    label = c1.selectbox("Class", ds.classes, index=ds.classes.index(with_boxes[0]) if with_boxes else 0,
                         key="aug_class")
    rows = m.index[m["label"] == label]
    k = c2.slider("Image of the class", 1, len(rows), 1, key="aug_pick") if len(rows) > 1 else 1
    cache = ui.cached_pixels(ds, 256)
    row = m.loc[rows[k - 1]]
    boxes = [box_to_cache(b, row["width"], row["height"], cache.size) for b in row["boxes"]]
    return np.array(cache.array[rows[k - 1]]), boxes, f"{row['image_id']} · {label} · {row['split']}"


@st.cache_data(max_entries=32, show_spinner=False)
def cached_preview(pipeline_json: str, image: np.ndarray, boxes: list, n: int, seed: int, draw: bool, classes: list):
    pipeline = Pipeline.from_json(pipeline_json)
    out = []
    for sample in preview_samples(pipeline, image, boxes, n, seed):
        caption = " · ".join(describe_applied(a["params"], a["op"]) for a in sample.applied) or "no step ran"
        out.append((draw_boxes(display_uint8(sample.image), sample.boxes if draw else [], classes, labels=False), caption))
    return out


@st.cache_data(max_entries=4, show_spinner=False)
def cached_zip(root: str, content_hash: str) -> bytes:
    from core.data.datasets import load_dataset

    return augmented_zip(load_dataset(root))


# --- the lab: builder + preview in one fragment, so a slider reruns only this part ---------------

@st.fragment
def lab(image: np.ndarray, boxes: list, caption: str) -> None:
    build, view = st.columns([2, 3], gap="large")
    with build:
        st.subheader("Pipeline")
        p1, p2 = st.columns([3, 1], vertical_alignment="bottom")
        p1.selectbox("Preset", list(PRESETS), key="aug_preset")
        p2.button("Load", key="aug_load_preset", on_click=load_preset, width="stretch")
        st.segmented_control("Mode", ["chain", "one_of"], key="aug_mode",
                             help="chain: every step in order, each with its probability. "
                                  "one_of: one step per image, the probabilities are weights.")
        steps = state["aug_steps"]
        for i, step in enumerate(list(steps)):
            step_editor(i, step, len(steps))
        a1, a2 = st.columns([3, 1], vertical_alignment="bottom")
        new_op = a1.selectbox("Add an operation", list(OPS), format_func=lambda n: OPS[n].title, key="aug_add_op")
        a2.button("Add", key="aug_add", icon=":material/add:", on_click=add_step, args=(new_op,), width="stretch")
        st.file_uploader("Load a pipeline JSON", type=["json"], key="aug_json_upload", on_change=load_json)
        if state.get("aug_json_error"):
            st.error(state["aug_json_error"])
    try:
        pipeline = current_pipeline()
    except ValueError as e:
        view.error(str(e))
        return
    with view:
        st.subheader("Preview")
        v1, v2, v3 = st.columns([3, 2, 1], vertical_alignment="bottom")
        n = v1.slider("Samples", 1, 11, 5, key="aug_n")
        seed = v2.number_input("Seed", 0, 10_000, 0, key="aug_seed")
        draw = v3.toggle("Boxes", value=True, key="aug_boxes")
        tiles = [(draw_boxes(display_uint8(image), boxes if draw else [], ds.classes, labels=False), f"original · {caption}")]
        tiles += cached_preview(pipeline.to_json(), image, boxes, n, int(seed), draw, ds.classes)
        for start in range(0, len(tiles), 3):
            for col, (tile, text) in zip(st.columns(3), tiles[start:start + 3]):
                col.image(tile, width="stretch", output_format="PNG")
                col.caption(text)
        d1, d2 = st.columns(2)
        d1.download_button("Pipeline JSON", pipeline.to_json(), f"pipeline-{pipeline.hash}.json", "application/json",
                           key="aug_dl_json", icon=":material/download:", width="stretch")
        with d2.popover("Python snippet", width="stretch"):
            st.code(pipeline.to_python(), language="python")
    apply_section(pipeline)


def apply_section(pipeline: Pipeline) -> None:
    st.subheader("Apply to the training split")
    train = ds.class_counts("train")
    c1, c2, c3, c4 = st.columns([4, 2, 2, 1], vertical_alignment="bottom")
    classes = c1.multiselect("Classes", ds.classes, default=ds.classes, key="aug_apply_classes")
    how = c2.segmented_control("Amount", ["target", "copies"], default="target", key="aug_apply_how",
                               help="target: grow each chosen class's training split to a number of images. "
                                    "copies: augmented copies of every training image.")
    biggest = max([train[c] for c in classes] or [1])
    if how == "copies":
        copies, target = c3.number_input("Copies per image", 1, 50, 1, key="aug_copies"), None
    else:
        target, copies = c3.number_input("Training images per class", 1, 100_000, max(1, biggest), key="aug_target"), 1
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="aug_apply_seed")
    out = default_output_dir(ds, pipeline)
    st.caption(f"Writes `{out}`: the source rows plus augmented training images with source "
               f"`classic:{pipeline.hash}`; logged to MLflow as an `augment` run.")
    if st.button("Apply to training split", key="aug_apply", type="primary", icon=":material/auto_fix_high:",
                 disabled=not classes or not pipeline.steps):
        config = AugmentConfig(pipeline, tuple(classes), target, int(copies), int(seed))
        bar = st.progress(0.0, text="Starting…")
        try:
            result = augment_dataset(ds, config, out, overwrite=True,
                                     on_progress=lambda d, t, m: bar.progress(d / max(t, 1), text=f"{m} · {d}/{t}"))
        except ValueError as e:
            bar.empty()
            st.error(str(e))
            return
        bar.empty()
        state["aug_result"] = {"root": str(result.dataset.root), "id": result.dataset.id, "run_id": result.run_id,
                               "hash": result.dataset.content_hash, "added": result.added, "notes": result.notes,
                               "skipped": len(result.skipped), "seconds": result.seconds}
    done = state.get("aug_result")
    if done:
        st.success(f"Wrote **{done['id']}** in {done['seconds']} s · {sum(done['added'].values())} augmented "
                   f"images · MLflow run `{done['run_id']}`")
        for note in done["notes"]:
            st.caption(note)
        if done["skipped"]:
            st.warning(f"{done['skipped']} source image(s) could not be read and were skipped.")
        r1, r2, r3 = st.columns([3, 2, 2], vertical_alignment="center")
        r1.markdown("Added: " + ", ".join(f"{c} **{n}**" for c, n in done["added"].items()))
        r2.download_button("Augmented images (zip)", cached_zip(done["root"], done["hash"]), "augmented.zip",
                           "application/zip", key="aug_dl_zip", icon=":material/folder_zip:", width="stretch")
        if r3.button("Make it the active dataset", key="aug_activate", width="stretch"):
            state["dataset_dir"] = done["root"]
            st.rerun()


lab(*pick_image())
