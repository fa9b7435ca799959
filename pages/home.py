"""Home: what the tool is for, the workflow, and the active dataset at a glance."""
import streamlit as st

from core.charts import class_balance_html
from core.data.datasets import imbalance_ratio
from pages import ui

ds = ui.setup("Home")
st.title("MedAug Studio")
st.markdown(
    "Does augmentation — classic or GAN-generated — make medical-image classifiers better when "
    "data is **scarce and imbalanced**? For which lesion classes, and by how much? MedAug Studio "
    "answers that on spine radiographs (VinDr-SpineXR, or the built-in phantom), logging every run "
    "to MLflow so each chart traces back to the run that made it."
)

st.subheader("Workflow")
PER_ROW = 3   # six cards in one row cut their buttons off ("Open Augme") at 1400 px with the sidebar open
cols = [c for _ in range(0, len(ui.WORKFLOW), PER_ROW) for c in st.columns(PER_ROW)]
for i, (col, (step, text, page)) in enumerate(zip(cols, ui.WORKFLOW), start=1):
    with col.container(border=True, height="stretch"):
        st.markdown(f"**{i}. {step}**")
        st.caption(text)
        if page:
            st.page_link(page, label=f"Open {step}", icon=":material/arrow_forward:")
        else:
            st.badge("planned", color="gray")

st.subheader("Active dataset")
counts = ds.class_counts()
left, right = st.columns([1, 2])
with left:
    st.markdown(f"**{ds.name}** · `{ds.id}`")
    ui.synthetic_badge(ds)
    st.metric("Images", f"{len(ds.manifest):,}")
    st.metric("Smallest class", f"{min(counts.values())}", help=min(counts, key=counts.get))
    st.metric("Imbalance ratio", f"{imbalance_ratio(counts):.1f}:1")
    st.page_link("pages/dataset.py", label="Explore the dataset", icon=":material/photo_library:")
with right:
    st.html(class_balance_html(ds.split_counts()))   # plain HTML: Home needs no plotly.js (a fast first page)
