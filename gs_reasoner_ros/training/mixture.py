"""Data mixtures in the authors' YAML format (LLaVA-NeXT's `datasets:` list).

    datasets:
      - json_path: 3d_visual_grounding/scanrefer_train_llava_style.json
        sampling_strategy: "first:90%"     # all | first:N | end:N | random:N, N a count or a percentage

authors: a percentage becomes ceil(p * len / 100) samples, so "first:90%" and "end:10%" of the
same file overlap by one sample when 10% of its length is not an integer (the released pretrain
and finetune mixtures do exactly this). "random:N" shuffles with the mixture's seed here (the
authors' global `random`). Relative json_path values are resolved against the YAML's folder.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from gs_reasoner_ros.training.data import load_sample_file

_STRATEGY = re.compile(r"^(all|first|end|random)(?::(\d+)(%?))?$")


def parse_strategy(strategy: str) -> tuple[str, int | None, bool]:
    """("first", 90, True) for "first:90%"; ("all", None, False) for "all"."""
    m = _STRATEGY.match(str(strategy).strip())
    if not m:
        raise ValueError(f"sampling_strategy {strategy!r} is not one of all, first:N[%], end:N[%], random:N[%]")
    kind, number, percent = m.group(1), m.group(2), bool(m.group(3))
    if kind != "all" and number is None:
        raise ValueError(f"sampling_strategy {strategy!r} needs a count, e.g. {kind}:10 or {kind}:10%")
    if percent and int(number) > 100:
        raise ValueError(f"sampling_strategy {strategy!r}: a percentage above 100")
    return kind, None if number is None else int(number), percent


def select(samples: list, strategy: str, rng: np.random.Generator | None = None) -> list:
    """The part of one file's samples a strategy keeps."""
    kind, number, percent = parse_strategy(strategy)
    if kind == "all":
        return list(samples)
    count = math.ceil(number * len(samples) / 100) if percent else min(number, len(samples))
    if kind == "first":
        return list(samples[:count])
    if kind == "end":
        return list(samples[len(samples) - count:])  # not samples[-count:], which is everything for 0
    order = (rng or np.random.default_rng(0)).permutation(len(samples))
    return [samples[i] for i in order[:count]]


def load_mixture(path: str | os.PathLike, seed: int = 0) -> list[dict]:
    """All samples of a mixture YAML, file by file in the listed order."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mixture file {path} does not exist")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = config.get("datasets") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty 'datasets:' list")
    rng = np.random.default_rng(seed)
    samples: list[dict] = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise ValueError(f"{path}: datasets[{k}] needs a json_path")
        json_path = Path(entry["json_path"])
        if not json_path.is_absolute():
            json_path = path.parent / json_path
        samples += select(load_sample_file(json_path), entry.get("sampling_strategy", "all"), rng)
    return samples


def load_training_samples(data: str | os.PathLike, seed: int = 0) -> list[dict]:
    """A mixture YAML (.yaml/.yml) or a single JSON/JSONL sample file."""
    data = Path(data)
    if data.suffix.lower() in (".yaml", ".yml"):
        return load_mixture(data, seed)
    return load_sample_file(data)
