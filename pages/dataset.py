"""Dataset page: class balance, a sample grid per class with lesion boxes, image details."""
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
