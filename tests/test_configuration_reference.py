"""docs/configuration.md against conf/: every key of every config group documented, with its
default as conf/ sets it, and every documented key real.

The reference is a table ``| key | default | meaning |`` per group; a table under a heading that
names ``group=option`` holds that option's own keys and defaults. Defaults are read as YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("cell", "task", "bptt", "clip", "optim", "trainer", "logger", "callbacks")
REFERENCE = ROOT / "docs" / "configuration.md"


@dataclass
class Row:
    key: str
    default: object
    scope: tuple[str, str] | None  # (group, option) for a table under "### `group=option`"
    meaning: str


def reference_rows() -> list[Row]:
    rows, scope = [], None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#"):
            option = re.search(r"`(\w+)=(\w+)`", line)
            scope = (option.group(1), option.group(2)) if option else None
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        key, default, meaning = (c.strip("`") if i < 2 else c for i, c in enumerate(cells))
        rows.append(Row(key, yaml.safe_load(default), scope, meaning))
    return rows


def flat(node: object, prefix: str) -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    keys = {}
    for key, value in node.items():
        if not str(key).startswith("_"):
            keys |= flat(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


@pytest.fixture(scope="module")
def composed():
    """Flat configs: ``None`` the default, ``(group, option)`` that group's keys under
    ``group=option``; and the default config's group choices."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bpttlab.cli.train import CONFIG_DIR

    def container(overrides, hydra=False):
        cfg = compose("train", overrides=overrides, return_hydra_config=hydra)
        return OmegaConf.to_container(cfg, resolve=False)

    configs = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = container([], hydra=True)
        choices = default.pop("hydra")["runtime"]["choices"]
        configs[None] = flat(default, "")
        for group in GROUPS:
            for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
                if path.stem != "base":  # not an option: each option starts from it
                    option = container([f"{group}={path.stem}"])
                    configs[(group, path.stem)] = flat(option[group], group)
    return configs, choices, Path(CONFIG_DIR)


def test_every_config_key_is_documented_with_its_default(composed):
    configs, choices, _ = composed
    rows = reference_rows()
    for scope, config in configs.items():
        for key, value in config.items():
            group = key.split(".")[0]
            option = scope or (group, choices.get(group))  # the default config: its options'
            here = [r for r in rows if r.key == key and r.scope in (None, option)]
            assert here, f"{key} ({scope or 'default'}): no row in {REFERENCE.name}"
            assert here[-1].default == value, f"{key} ({scope or 'default'}): conf/ says {value!r}"


def test_every_documented_key_is_real(composed):
    configs, choices, config_dir = composed
    for row in reference_rows():
        if "." not in row.key and row.key in choices:  # a group: its default option
            assert row.default == choices[row.key], f"{row.key}: conf/ picks {choices[row.key]}"
            options = [p.stem for p in (config_dir / row.key).glob("*.yaml")]
            for option in set(options) - {"base"}:
                assert f"`{option}`" in row.meaning, f"{row.key}: option {option} not listed"
            continue
        scopes = [row.scope] if row.scope else list(configs)
        assert row.scope is None or row.scope in configs, f"{row.scope}: no such option"
        found = [configs[s][row.key] for s in scopes if row.key in configs[s]]
        assert found, f"{row.key} ({row.scope or 'shared'}): no such key in conf/"
        assert all(v == row.default for v in found), f"{row.key}: conf/ says {found}"
