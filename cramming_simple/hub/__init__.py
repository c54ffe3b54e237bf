"""A run's model in the Hugging Face world: the exported folder with its model card, and the push to the hub.
Takes a run folder (`folders`, `glue` results); gives an export folder and a hub repository.
"""
