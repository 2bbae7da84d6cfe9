"""~/export_scene without ROS: the keyframes written under export_root in the processed-data
layout, under a name that can only be a new plain folder inside export_root, within a disk
budget. Policy when the budget is reached: refuse (and say so); exports are the user's data, so
nothing is deleted to make room."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole (fullmatch)


@dataclass(frozen=True)
class ExportBudget:
    max_bytes: int = 2 << 30
    max_count: int = 100


def usage(root: Path) -> tuple[int, int]:
    """(exports, bytes) under export_root: its entries, and the size of every file below them."""
    count, size = 0, 0
    for entry in root.iterdir():
        count += 1
        for dirpath, _, files in os.walk(entry):
            size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return count, size


def export_target(export_root: str | os.PathLike, name: str) -> Path:
    """The folder export_root/name for ~/export_scene, or ValueError when the name is not a
    plain new folder name inside export_root (slashes, '..', absolute paths, symlinks out)."""
    if not isinstance(name, str) or not EXPORT_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"export name {name!r} must be a plain folder name: letters, digits, '.', '_', '-', "
                         "starting with a letter or digit, at most 128 characters")
    root = Path(export_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    root_real = root.resolve(strict=True)
    target = root_real / name
    if os.path.lexists(target):
        raise ValueError(f"{target} already exists; choose another name")
    if target.resolve().parent != root_real:
        raise ValueError(f"{name!r} resolves outside export_root {root_real}")
    return target


def export_scene(keyframes, export_root, name: str, axis_align: np.ndarray | None = None,
                 budget: ExportBudget = ExportBudget()) -> Path:
    """Write every keyframe under export_root/name in the processed-data layout; ValueError when
    the name is refused or the export would leave more than the budget under export_root (the
    partial export is removed again)."""
    if len(keyframes) == 0:
        raise ValueError("no keyframes to export yet")
    target = export_target(export_root, name)
    count, size = usage(target.parent)
    if count >= budget.max_count or size >= budget.max_bytes:
        raise ValueError(f"export_root holds {count} exports, {size / 2**20:.1f} MB: the budget is "
                         f"{budget.max_count} exports, {budget.max_bytes / 2**20:.0f} MB (export_max_count, "
                         "export_budget_mb); delete old exports to make room")
    target.mkdir()  # claims the name now (fails if it appeared meanwhile), before any slow work
    try:
        scene = keyframes.to_scene(len(keyframes), np.eye(4) if axis_align is None else axis_align)
        path = scene.save_processed(target)
        _, after = usage(target.parent)
        if after > budget.max_bytes:
            raise ValueError(f"this export would bring export_root to {after / 2**20:.1f} MB, over export_budget_mb "
                             f"{budget.max_bytes / 2**20:.0f}; delete old exports to make room")
        return path
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
