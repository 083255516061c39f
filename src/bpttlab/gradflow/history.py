"""A run's gradient-flow profiles as data: every probe of one run, read back from the
``step_NNNNNN.npz`` files GradientFlow wrote (``profile.save_profile``), as arrays of probes x
timesteps. Needs only numpy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bpttlab.gradflow.profile import load_profile

PROFILE_DIR = "grad_flow"
"""Where a run (``bpttlab-train``) or a library fit (its logger's dir) keeps its npz files."""
FULL = "full_"
"""Prefix of a full-BPTT reference profile's key in an npz (``full_reference=True``)."""
RECORDS = ("step", "seq_len", "truncation", "boundaries", "landmark_names", "landmark_spans")
"""The npz keys that describe the probe rather than hold a state's profile."""


@dataclass(frozen=True)
class RunProfiles:
    """Every probe of one run: ``profiles[key][i]`` is ||dL/dh_k||, k = 0..T-1, of state
    ``key`` (``h_layer0``, ``c_layer0``, ...) at training step ``steps[i]``.

    Attributes:
        directory: the directory the npz files were read from.
        steps: (probes,) the probed optimiser steps, ascending.
        profiles: per state key, (probes, T) float64; NaN for a probe without that state.
        full: the same for the full-BPTT reference (``full_reference=True``), else empty.
        landmarks: the task's spans [start, end) of timesteps, by name.
        boundaries: timesteps where a truncation window starts (none under full BPTT).
        truncation: the truncation length, or None for full BPTT.
    """

    directory: Path
    steps: np.ndarray
    profiles: dict[str, np.ndarray]
    full: dict[str, np.ndarray]
    landmarks: dict[str, tuple[int, int]]
    boundaries: tuple[int, ...]
    truncation: int | None

    @property
    def seq_len(self) -> int:
        return next(iter(self.profiles.values())).shape[1]

    def at(self, step: int) -> dict[str, np.ndarray]:
        """Every state's (T,) profile at the probed ``step``; ValueError if it was not probed."""
        matches = np.flatnonzero(self.steps == step)
        if not len(matches):
            probed = ", ".join(str(s) for s in self.steps)
            raise ValueError(f"step={step} was not probed in {self.directory} (probed: {probed})")
        return {key: rows[matches[0]] for key, rows in self.profiles.items()}


def profile_files(run_dir: str | Path) -> list[Path]:
    """The npz files of ``run_dir`` (a run dir, a fit's log dir, or the profile dir itself), by
    step; empty when there are none."""
    run_dir = Path(run_dir)
    for directory in (run_dir, run_dir / PROFILE_DIR):
        files = sorted(directory.glob("step_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
        if files:
            return files
    return []


def load_run(run_dir: str | Path) -> RunProfiles:
    """Read every probe of a run: ``run_dir`` is a ``bpttlab-train`` run dir, the log dir of a
    library fit (``trainer.log_dir``: GradientFlow writes to its ``grad_flow/``), or a directory
    of ``step_NNNNNN.npz`` files itself (GradientFlow's ``save_dir``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
        ValueError: it holds no profiles.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not a directory")
    files = profile_files(run_dir)
    if not files:
        raise ValueError(
            f"run_dir={str(run_dir)!r} holds no gradient profiles: no step_NNNNNN.npz in it or in "
            f"its {PROFILE_DIR}/ (GradientFlow writes them; was the run trained without it?)"
        )
    probes = [load_profile(path) for path in files]
    first = probes[0]
    truncation = int(first["truncation"])
    states = _stacked(probes, lambda k: k not in RECORDS and not k.startswith(FULL))
    full = _stacked(probes, lambda k: k.startswith(FULL))
    names = (str(n) for n in first["landmark_names"])
    spans = (tuple(int(v) for v in span) for span in first["landmark_spans"])
    return RunProfiles(
        directory=files[0].parent,
        steps=np.array([int(p["step"]) for p in probes]),
        profiles=states,
        full={key.removeprefix(FULL): rows for key, rows in full.items()},
        landmarks=dict(zip(names, spans, strict=True)),
        boundaries=tuple(int(b) for b in first["boundaries"]),
        truncation=None if truncation < 0 else truncation,
    )


def _stacked(probes: list[dict[str, np.ndarray]], chosen) -> dict[str, np.ndarray]:
    """The ``chosen`` keys of every probe as (probes, T) rows; NaN where a probe lacks one."""
    keys = sorted({key for probe in probes for key in probe if chosen(key)})
    seq_len = int(probes[0]["seq_len"])
    return {
        key: np.stack([p[key] if key in p else np.full(seq_len, np.nan) for p in probes])
        for key in keys
    }
