"""``mnist-lightning tune``: hyperparameter search with Optuna, without a W&B server.

A search space (``configs/tune/*.yaml``, :mod:`.space`) names dotted ``fit`` settings and their ranges. Every trial
(:mod:`.trial`) is a real ``fit`` built by ``MNISTLightningCLI`` from the base preset, the fixed settings and the
trial's values, run in this process (so that Optuna's pruning callback can stop a bad trial after any validation),
with its own run folder, checkpoints and W&B run. The study (:mod:`.study`) lives in an Optuna journal file under
``runs/tune/<study>/``, which several processes (or machines sharing the folder) can append to at once; ``--resume``
continues an interrupted search. :mod:`.checks` finds what would go wrong before any trial runs, :mod:`.search` is
one process's loop over trials, :mod:`.workers` the processes ``--workers`` starts, :mod:`.results` writes the
result files, and :mod:`.command` is the command line.
"""

from mnist_lightning.tuning.command import add_tune_parser, run_tune_command, tune
from mnist_lightning.tuning.results import write_outputs
from mnist_lightning.tuning.space import Param, SearchSpace, load_space

__all__ = ["Param", "SearchSpace", "add_tune_parser", "load_space", "run_tune_command", "tune", "write_outputs"]
