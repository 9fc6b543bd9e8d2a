"""Each task metric against a plain numpy computation of its textbook formula."""

import numpy as np
import pytest
import torch

from flexbert.eval.metrics import MULTI, REGRESSION, SINGLE, MetricError, build_metrics, predictions, targets


def _compute(name, problem, num_labels, logits, labels):
    metric = build_metrics([name], problem, num_labels, "test")[name]
    half = len(labels) // 2  # two updates: the metric must accumulate over batches
    for part in (slice(0, half), slice(half, None)):
        metric.update(predictions(logits[part], problem), targets(labels[part], problem))
    return float(metric.compute())


def _f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _confusion(pred, true, k):
    return np.array([[np.sum((true == i) & (pred == j)) for j in range(k)] for i in range(k)], dtype=float)


def _matthews(pred, true, k):
    c = _confusion(pred, true, k)
    t, p, n, s = c.sum(1), c.sum(0), np.trace(c), c.sum()
    return (n * s - t @ p) / np.sqrt((s**2 - p @ p) * (s**2 - t @ t))


def _ranks(x):
    return np.argsort(np.argsort(x)).astype(float)


@pytest.mark.parametrize("k", [2, 3])
def test_single_label_metrics(k):
    gen = torch.Generator().manual_seed(k)
    logits, labels = torch.randn(101, k, generator=gen), torch.randint(0, k, (101,), generator=gen)
    pred, true = logits.argmax(-1).numpy(), labels.numpy()
    c = _confusion(pred, true, k)
    per_class_f1 = [_f1(c[i, i], c[:, i].sum() - c[i, i], c[i, :].sum() - c[i, i]) for i in range(k)]
    expected = {"accuracy": np.mean(pred == true), "f1_macro": np.mean(per_class_f1), "matthews": _matthews(pred, true, k)}
    if k == 2:
        expected["f1"] = per_class_f1[1]
    for name, value in expected.items():
        assert _compute(name, SINGLE, k, logits, labels) == pytest.approx(value, abs=1e-5), name


def test_regression_metrics():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randn(80, generator=gen)
    logits = (labels + 0.7 * torch.randn(80, generator=gen)).unsqueeze(1)
    x, y = logits[:, 0].double().numpy(), labels.double().numpy()
    assert _compute("pearson", REGRESSION, 1, logits, labels) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-5)
    assert _compute("spearman", REGRESSION, 1, logits, labels) == pytest.approx(np.corrcoef(_ranks(x), _ranks(y))[0, 1], abs=1e-5)


def test_multi_label_f1():
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(90, 4, generator=gen), (torch.rand(90, 4, generator=gen) < 0.4).float()
    pred, true = (torch.sigmoid(logits) > 0.5).numpy(), labels.numpy().astype(bool)
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    assert _compute("f1_micro", MULTI, 4, logits, labels) == pytest.approx(_f1(tp.sum(), fp.sum(), fn.sum()), abs=1e-5)
    assert _compute("f1_macro", MULTI, 4, logits, labels) == pytest.approx(np.mean([_f1(*v) for v in zip(tp, fp, fn)]), abs=1e-5)


def test_metric_that_does_not_fit_the_task_is_named():
    with pytest.raises(MetricError, match="'f1' is binary"):
        build_metrics(["f1"], SINGLE, 3, "task x")
    with pytest.raises(MetricError, match="task x: metric 'pearson' does not apply"):
        build_metrics(["pearson"], SINGLE, 2, "task x")
