"""Budgeted pretraining: the typed `PretrainConfig`, the `Trainer` and its components, the run folder, torchrun.
Takes the config, `data` and `model`; gives a run folder (checkpoints, metrics, `model/`, summary) to `glue`, `report`.
"""
