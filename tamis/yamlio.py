"""Safe YAML through libyaml's C loader when PyYAML has it (params.yaml, dvc.yaml and dvc.lock are read often)."""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
