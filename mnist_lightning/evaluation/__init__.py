"""Evaluating trained classifiers: ``mnist-lightning report`` and the ensembles of ``test`` and ``predict``.

- :mod:`.report`: :func:`~.report.build_report`, which runs the checkpoints and writes the report folder;
- :mod:`.metrics`: accuracy, per-class precision/recall/F1, confusion matrix and the most confident mistakes;
- :mod:`.calibration`: calibration errors, reliability bins and temperature fitting;
- :mod:`.temperature`: the fitted temperature stored with its checkpoint, and the one place that decides the
  temperature predict, serve, export and ensembles apply;
- :mod:`.robustness`: accuracy on shifted test digits;
- :mod:`.rendering`: the report's JSON and Markdown;
- :mod:`.wandb_run`: the report as a W&B run of its own, linked to the run that trained a checkpoint;
- :mod:`.ensemble`: test-time augmentation and checkpoint ensembles.

Nothing is imported here, so that ``mnist-lightning fit`` (which needs only the ensemble) does not load the rest.
"""
