"""MedAug Studio: the Streamlit entry point. It only builds the navigation (pages/ui.py lists the pages).

Streamlit runs this file as the module ``__main__``. A process pool started with the spawn method
(the first start's phantom render, the pixel cache, an import) re-runs ``__main__``'s file in every
worker, as ``__mp_main__``: the guard keeps the workers from building the app there (each did, in
bare mode, with a "missing ScriptRunContext" warning per Streamlit call).
"""
if __name__ == "__main__":
    from pages import ui

    ui.navigation().run()
