"""A run's model in the Hugging Face world: the exported folder with its model card, and the push to the hub."""
