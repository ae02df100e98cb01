"""Every default lives in core/config.py; a file under conf/ holds only what it changes.

A leaf in a conf/ YAML whose value equals the structured default for its key
fails here, unless that line, or the comment line just above it (not the
file's header), says why the value is stated there. PyYAML has no comment
access, so the comments are read from the lines at the nodes' positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from core.config import CONF_DIR, AppConfig

YAML_FILES = sorted(CONF_DIR.rglob("*.yaml"))
ABSENT = object()  # a key the schema does not have (Hydra refuses it anyway)
NOT_CONFIG_KEYS = {"defaults", "hydra"}  # what Hydra itself reads from conf/config.yaml


def structured_defaults() -> dict[str, Any]:
    """The schema's defaults, interpolations unresolved (``${paths.home}/logs`` as written)."""
    return OmegaConf.to_container(OmegaConf.structured(AppConfig), resolve=False)  # type: ignore[return-value]


def package_of(path: Path, text: str) -> list[str]:
    """The key path a file's content lands under: its group, or what ``# @package`` says."""
    group = list(path.relative_to(CONF_DIR).parts[:-1])
    for line in text.splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            return [] if package == "_global_" else group if package == "_group_" else package.split(".")
    return group


def header_end(lines: list[str]) -> int:
    """Index of the first line after the file's leading comment block."""
    n = 0
    while n < len(lines) and lines[n].lstrip().startswith("#"):
        n += 1
    return n


def has_reason(lines: list[str], key: yaml.Node, value: yaml.Node, header: int) -> bool:
    """A comment on the key's line (after its value), or a comment line just above it."""
    row = key.start_mark.line
    start = value.end_mark.column if value.end_mark.line == row else key.end_mark.column
    if " #" in f" {lines[row][start:]}":
        return True
    return row - 1 >= header and lines[row - 1].lstrip().startswith("#")


def default_at(defaults: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(defaults, dict) or key not in defaults:
            return ABSENT
        defaults = defaults[key]
    return defaults


def same_value(stated: Any, default: Any) -> bool:
    """Equal as config values: 10 == 10.0, but true is not 1."""
    return isinstance(stated, bool) == isinstance(default, bool) and stated == default


def repeated_defaults(text: str, prefix: list[str], defaults: dict[str, Any]) -> list[str]:
    """``"line N: key.path = value"`` for every leaf that repeats its default without a reason."""
    lines = text.splitlines()
    root, data = yaml.compose(text), yaml.safe_load(text)
    found: list[str] = []

    def walk(node: yaml.Node, value: Any, keys: list[str]) -> None:
        for key_node, value_node in node.value:
            name = key_node.value
            if not keys and name in NOT_CONFIG_KEYS:
                continue
            path = [*keys, name]
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, value[name], path)
                continue
            default = default_at(defaults, path)
            stated = value[name]
            if default is not ABSENT and same_value(stated, default) \
                    and not has_reason(lines, key_node, value_node, header_end(lines)):
                found.append(f"line {key_node.start_mark.line + 1}: {'.'.join(path)} = {stated!r}")

    if isinstance(root, yaml.MappingNode):
        walk(root, data, prefix)
    return found


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_no_yaml_repeats_a_structured_default_without_saying_why(path: Path) -> None:
    text = path.read_text()
    repeated = repeated_defaults(text, package_of(path, text), structured_defaults())
    assert not repeated, (f"{path.relative_to(CONF_DIR.parent)} repeats core/config.py's defaults; delete "
                          f"these lines or say why beside them: {repeated}")


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_yaml_opens_with_a_header_comment(path: Path) -> None:
    """The header says what the file changes (after Hydra's ``# @package`` line, if any)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    assert lines and lines[0].startswith("# "), f"{path.name}: start with a comment saying what it changes"


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        ("# header\nparallelism: 1\n", ["line 2: flink.parallelism = 1"]),
        ("# header\nparallelism: 2\n", []),
        ("# header\nparallelism: 1  # why it is stated\n", []),
        ("# header\n\n# why it is stated\nparallelism: 1\n", []),
        ("# header\nvalid_ranges:\n  voltage: [0, 5]\n", ["line 3: flink.valid_ranges.voltage = [0, 5]"]),
        ("# header\ncheckpoint_dir: ${paths.data_dir}/flink/checkpoints\n",
         ["line 2: flink.checkpoint_dir = '${paths.data_dir}/flink/checkpoints'"]),
        ("# header\nparallelism: true\nno_such_key: 1\n", []),
    ],
)
def test_the_check_flags_a_repeated_default(text: str, repeated: list[str]) -> None:
    assert repeated_defaults(text, ["flink"], structured_defaults()) == repeated
