"""GLUE metrics from scikit-learn and scipy (the `evaluate` hub scripts do not load offline)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# name -> f(predictions, labels); the metric names of glue.tasks and tasks.yaml.
# F1 is of the positive class 1 (duplicate / paraphrase).
METRIC_FUNCTIONS = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "matthews": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y).statistic,
    "spearman": lambda p, y: spearmanr(p, y).statistic,
}


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """(N, num_labels) logits -> (N,) predicted label ids, or the scores themselves for regression."""
    return logits[:, 0] if regression else logits.argmax(axis=-1)


def compute(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{metric: value} as plain floats; NaN where a metric is undefined (e.g. Pearson of constant predictions)."""
    return {name: float(METRIC_FUNCTIONS[name](preds, labels)) for name in names}
