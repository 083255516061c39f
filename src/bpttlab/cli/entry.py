"""The ``bpttlab-train`` command. Ctrl-C before a run takes SIGINT over (while the libraries
load, the command line is checked or Hydra sets up, a few seconds) ends it in one line, with
the exit status 130 a shell gives a command that SIGINT ended, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from bpttlab.cli.train import main as train_main  # seconds: torch, Lightning, Hydra

        train_main()
    except KeyboardInterrupt:
        print("bpttlab-train: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
