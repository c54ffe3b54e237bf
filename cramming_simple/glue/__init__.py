"""GLUE fine-tuning: the task table and protocols as data, reading and checking task data, the runner, scoring.
Takes a run folder's `model/` (or a model folder); gives `glue/<task>/seed<k>.json` and `glue/summary.json` to `report`.
"""
