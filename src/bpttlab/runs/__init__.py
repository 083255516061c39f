"""Run safety: run dirs and their locks, resume, checkpoints, interrupts, outcome, run log."""
