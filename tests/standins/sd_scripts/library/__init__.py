"""STAND-IN for sd-scripts' `library` package (tests only): the dataset code that autotrain's
dataset check calls (autotrain/trainers/sd_scripts_probe.py), copied from sd-scripts 48d368fa."""
