import numpy as np
import pytest

from hf_tune.metrics import classification_metrics


def test_binary_metrics_known_answer():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ranked right


def test_multiclass_auc_and_single_class():
    logits = np.eye(3) * 5
    m = classification_metrics(logits, np.array([0, 1, 2]))
    assert m["accuracy"] == 1.0 and m["roc_auc"] == 1.0 and m["f1_macro"] == 1.0
    assert "roc_auc" not in classification_metrics(logits, np.array([0, 0, 0]))
