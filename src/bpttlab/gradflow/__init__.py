"""Gradient flow through time: profile maths and files (``profile``), a run's profiles as data
(``history``), figures (``figures``), the full-BPTT reference of a truncated step
(``reference``) and the Lightning callback (``callback``). Importing this package loads only
``profile`` and ``history``."""

from bpttlab.gradflow.history import RunProfiles, load_run
from bpttlab.gradflow.profile import Probe, load_profile, profile_summary, state_norms

__all__ = [
    "GradientFlow",
    "Probe",
    "RunProfiles",
    "load_profile",
    "load_run",
    "profile_summary",
    "state_norms",
]


def __getattr__(name: str):
    if name == "GradientFlow":  # the callback needs Lightning: load it only when asked for
        from bpttlab.gradflow.callback import GradientFlow

        return GradientFlow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
