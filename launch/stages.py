"""The run chain: which stages a run has, in order, each given only its own config sections."""

from __future__ import annotations

from launch.config import Config
from pipeline.runner import Stage


def build_chain(cfg: Config) -> list[Stage]:
    """The stages of a run for this config, in order."""
    return []
