"""Gradient flow through time: profile maths and files (``profile``), figures (``figures``), the
full-BPTT reference of a truncated step (``reference``) and the Lightning callback
(``callback``). Importing this package loads only ``profile``."""

from bpttlab.gradflow.profile import Probe, load_profile, profile_summary, state_norms

__all__ = ["GradientFlow", "Probe", "load_profile", "profile_summary", "state_norms"]


def __getattr__(name: str):
    if name == "GradientFlow":  # the callback needs Lightning: load it only when asked for
        from bpttlab.gradflow.callback import GradientFlow

        return GradientFlow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
