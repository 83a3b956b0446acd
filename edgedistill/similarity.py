"""How far two embedding spaces agree on neighbours: one figure that distillation's validation
(distill/) and the bench's quality (bench/) both report, so it lives below both."""
from __future__ import annotations

import numpy as np


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k nearest neighbours (cosine) that two spaces agree on."""
    def knn(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]
    ka, kb = knn(a.astype(np.float64)), knn(b.astype(np.float64))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ka, kb)]))
