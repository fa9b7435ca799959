"""MedAug Studio core: data, augmentation, GANs, quality metrics, classifiers, studies.

Everything here runs without Streamlit (a test guards that boundary). Heavy packages
(torch, mlflow) are imported inside the modules that need them, never at package import,
so the CLI and the app start fast.
"""
