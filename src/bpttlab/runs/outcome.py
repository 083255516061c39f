"""How a run ended: ``status`` in metrics.json, the one line that says it, and files replaced
only whole (written next to the old one, then renamed over it).

``status`` is one of ``completed`` (trained to the end or solved), ``diverged`` (a non-finite
loss or gradient: a result), ``interrupted`` (SIGINT/SIGTERM; the checkpoint resumes it) or
``failed`` (an exception: not a result; ``error`` holds its one-line reason).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUSES = ("completed", "diverged", "interrupted", "failed")
TENSORBOARD_STATUS = {
    "completed": "success",
    "diverged": "success",
    "interrupted": "interrupted",
    "failed": "failed",
}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a reader sees the old file or the new one. A write
    that fails (a full disk) leaves the old file and no partial one."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_atomically(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def mark_reported(error: BaseException) -> None:
    """Note that the run's final line has told the user about ``error``."""
    error.bpttlab_reported = True


def reported(error: BaseException) -> bool:
    """Whether the run's final line has told the user about ``error``."""
    return getattr(error, "bpttlab_reported", False)


def one_line(error: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def final_line(metrics: dict[str, Any], resume_command: str | None = None) -> str:
    """The run's outcome in one line."""
    status, steps = metrics["status"], metrics["steps"]
    seconds = f"{metrics['wall_seconds']:.1f} s"
    loss = metrics.get("normalized_loss")
    loss_text = "n/a" if loss is None else f"{loss:.4g}"
    if status == "failed":
        return f"failed at step {steps} after {seconds}: {metrics['error']}"
    if status == "interrupted":
        return f"interrupted at step {steps}; resume with: {resume_command}"
    if status == "diverged":
        return f"diverged at step {metrics['diverged_at_step']} after {seconds}"
    if metrics["solved"]:
        solved = metrics["solved_at_step"]
        return f"solved at step {solved} after {seconds} (normalised loss {loss_text})"
    return f"not solved after {steps} steps, {seconds} (normalised loss {loss_text})"
