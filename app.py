"""MedAug Studio: the Streamlit entry point. It only builds the navigation (pages/ui.py lists the pages)."""
from pages import ui

ui.navigation().run()
