"""The commands, the top floor: each module parses its subcommand's arguments and orchestrates the domain
packages below it (`model`, `data`, `train`, `glue`, `report`, `bench`, `hub`), which never import a command.

Every module has `add_arguments(parser)` and `run(args) -> int`; its docstring is the subcommand's help.
"""

# name -> help line; the module is cramming_simple.commands.<name, '-' as '_'> (imported only when its command runs)
COMMANDS = {
    "params": "parameter count of every block",
    "data": "prepare a budget's pretraining data ahead of time",
    "pretrain": "pretrain one block for a wall-clock budget",
    "glue": "fine-tune a pretrained run on GLUE",
    "report": "tables and plots from run folders",
    "bench": "time training steps of every block side by side",
    "export": "a run's model as a Hugging Face folder with a model card (and push it to the hub)",
    "check-block": "a block's report card before any GPU time (shapes, gradients, signal, trainability, speed)",
    "sweep": "pretrain (block x seed), GLUE and the report: here, or as Slurm jobs (submitit)",
    "calibrate": "time Pre-LN here: the rate that makes a reference budget's hours into hours here",
}
