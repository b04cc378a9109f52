"""Error figures between a reference output and a candidate output.

Absolute errors are also given relative to the output scale (max |reference|),
which is what makes one tolerance usable across models whose logits span 1 or
1000: Polygraphy's fixed atol/rtol of 1e-5 is not.
"""

from __future__ import annotations

import numpy as np

from ..artifacts import ErrorFigures  # the manifest's record of them; computed here


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def compare_arrays(reference: np.ndarray, candidate: np.ndarray) -> ErrorFigures:
    """Figures for ``candidate`` against ``reference`` (same shape, compared in float64)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    finite = bool(np.isfinite(cand).all())
    diff = np.abs(ref - cand)
    if not finite:
        diff = np.where(np.isfinite(diff), diff, np.inf)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    ref_flat, cand_flat = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    norms = np.linalg.norm(ref_flat, axis=1) * np.linalg.norm(cand_flat, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(norms > 0, (ref_flat * cand_flat).sum(axis=1) / norms, 1.0)
    top1 = top5 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float((ref.argmax(1) == cand.argmax(1)).mean())
        k = min(5, ref.shape[1])
        ref_top, cand_top = _topk(ref, k), _topk(cand, k)
        top5 = float(np.mean([len(set(r) & set(c)) / k for r, c in zip(ref_top, cand_top)]))
    return ErrorFigures(
        max_abs=max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        median_abs=float(np.median(diff)) if diff.size else 0.0,
        p99_abs=float(np.percentile(diff, 99)) if diff.size else 0.0,
        max_rel=float((diff / (np.abs(ref) + 1e-12)).max()) if diff.size else 0.0,
        scale=scale,
        rel_to_scale=max_abs / scale if scale > 0 else max_abs,
        cosine=float(np.nan_to_num(per_sample, nan=-1.0).min()) if finite else float("nan"),
        top1_agreement=top1,
        top5_overlap=top5,
        finite=finite,
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy of (N, classes) scores against class indices."""
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(axis=1).mean())}


def top1_drop(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Top-1 points ``logits`` lose against ``reference`` (both (N, classes)): accuracy points against
    ``labels``; without labels, the share of images whose class changed, in points (an upper bound of the
    drop on any labels). The one measure of the export's ``--max-drop`` and of ``tune``."""
    if labels is None:
        return 100.0 * float(np.mean(logits.argmax(1) != reference.argmax(1)))
    return 100.0 * (accuracy(reference, labels)["top1"] - accuracy(logits, labels)["top1"])
