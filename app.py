"""MedAug Studio: the Streamlit entry point. It only builds the navigation."""
import streamlit as st

st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
]).run()
