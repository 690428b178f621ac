"""Agreement between a reference output and an artifact's output."""

from __future__ import annotations

import math

import numpy as np


def psnr(ref: np.ndarray, out: np.ndarray, peak: float | None = None) -> float:
    """20*log10(peak / RMSE) in dB; inf when identical. The peak is max|ref| (md-export's parity
    metric) unless given: the per-layer sensitivity analysis passes the reference's range."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    rmse = math.sqrt(float(np.mean((ref - out) ** 2)))
    if peak is None:
        peak = float(np.max(np.abs(ref))) if ref.size else 0.0
    if rmse == 0.0:
        return math.inf
    if peak == 0.0:
        return -math.inf
    return 20.0 * math.log10(peak / rmse)


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(out, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {tuple(ref.shape)} vs artifact {tuple(out.shape)}")
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    return {
        "psnr": psnr(ref, out),
        "cosine": cosine(ref, out),
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
    }


def worst(samples: list[dict[str, float]]) -> dict[str, float]:
    """Aggregate per-sample metrics by their worst case (mean_abs by the mean)."""
    return {
        "psnr": min(s["psnr"] for s in samples),
        "cosine": min(s["cosine"] for s in samples),
        "max_abs": max(s["max_abs"] for s in samples),
        "mean_abs": float(np.mean([s["mean_abs"] for s in samples])),
    }
