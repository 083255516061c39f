"""A checkpoint's seal: the run that wrote it and a checksum of everything else it holds, so that
a resume refuses another run's checkpoint and a damaged one.

The seal is one more entry of the checkpoint (``checkpoint["seal"]``): ``identity`` (the run's
name, seed and config digest, as ``bpttlab.runs.resume.identity`` gives them) and ``sha256``,
a digest of the other entries. The digest is taken over the contents, not the file's bytes:
every tensor's dtype, shape and bytes, every number, string and container, in order. What it
guards is exactly what Lightning would resume from, and a file loaded back digests the same as
the state that was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

SEAL = "seal"


def digest(state: Any) -> str:
    """The sha256 of ``state``'s contents (tensors, numbers, strings, nested containers)."""
    sha = hashlib.sha256()
    _feed(sha, state)
    return sha.hexdigest()


def _feed(sha: Any, node: Any) -> None:
    if isinstance(node, torch.Tensor):
        data = node.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        sha.update(f"tensor {node.dtype} {tuple(node.shape)} {data.nbytes}:".encode())
        sha.update(data.tobytes())
    elif isinstance(node, Mapping):
        sha.update(f"map {len(node)}:".encode())
        for key, value in node.items():
            _feed(sha, key)
            _feed(sha, value)
    elif isinstance(node, list | tuple):
        sha.update(f"{type(node).__name__} {len(node)}:".encode())
        for value in node:
            _feed(sha, value)
    else:  # None, bool, int, float, str and the like: their repr is exact
        text = f"{type(node).__name__} {node!r}"
        sha.update(f"{len(text)}:{text}".encode())


def sealed(checkpoint: dict[str, Any], identity: dict[str, Any] | None) -> dict[str, Any]:
    """``checkpoint`` with its seal: ``identity`` and the digest of its other entries."""
    contents = unsealed(checkpoint)
    return contents | {SEAL: {"identity": identity, "sha256": digest(contents)}}


def unsealed(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Every entry of ``checkpoint`` but its seal: what the seal's digest covers."""
    return {key: value for key, value in checkpoint.items() if key != SEAL}


def seal_problem(checkpoint: Any, identity: dict[str, Any]) -> str | None:
    """Why ``checkpoint`` (as loaded) cannot continue the run ``identity``, or None if it can."""
    seal = checkpoint.get(SEAL) if isinstance(checkpoint, dict) else None
    if not isinstance(seal, dict) or not isinstance(seal.get("sha256"), str):
        return "it carries no checksum and no run identity (not a checkpoint bpttlab wrote)"
    if digest(unsealed(checkpoint)) != seal["sha256"]:
        return "it is damaged: its contents do not match the checksum written with them"
    if seal.get("identity") != identity:
        return f"it belongs to {describe(seal.get('identity'))}, not to this {describe(identity)}"
    return None


def describe(identity: Any) -> str:
    """A run's identity in words: ``run 'NAME' (seed S, config DIGEST)``."""
    if not isinstance(identity, dict):
        return "no run"
    return (
        f"run {identity.get('run')!r} (seed {identity.get('seed')}, "
        f"config {identity.get('config')})"
    )
