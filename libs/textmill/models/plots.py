"""Evaluation plots logged to MLflow: confusion matrix, training curve, reliability diagram.

matplotlib with the Agg backend (no display needed on a driver or in CI), imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(path: Path, matrix: np.ndarray, labels: list[str], title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curve(path: Path, history: list[dict]) -> Path:
    """Train loss per epoch, and validation accuracy / macro-F1 when every epoch has them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if all("val_accuracy" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_accuracy"] for h in history], marker="s", color="tab:green", label="val accuracy")
        ax2.plot(epochs, [h["val_macro_f1"] for h in history], marker="^", color="tab:red", label="val macro-F1")
        ax2.set_ylabel("validation")
        ax2.legend(loc="center right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reliability(path: Path, tables: dict[str, list[dict]], title: str) -> Path:
    """Accuracy against mean confidence per bin (``classifier.calibration_bins``), one line per table."""
    from textmill.models.classifier import expected_calibration_error

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, table in tables.items():
        used = [b for b in table if b["rows"]]
        ax.plot(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            marker="o",
            label=f"{name} (ECE {expected_calibration_error(table):.3f})",
        )
    ax.set_xlabel("confidence (probability of the predicted label)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
