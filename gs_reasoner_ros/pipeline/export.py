"""~/export_scene without ROS: the keyframes written under export_root in the processed-data
layout, under a name that can only be a new plain folder inside export_root."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def export_target(export_root: str | os.PathLike, name: str) -> Path:
    """The folder export_root/name for ~/export_scene, or ValueError when the name is not a
    plain new folder name inside export_root (slashes, '..', absolute paths, symlinks out)."""
    if not isinstance(name, str) or not EXPORT_NAME.match(name) or name in (".", ".."):
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


def export_scene(keyframes, export_root, name: str, axis_align: np.ndarray | None = None) -> Path:
    """Write every keyframe under export_root/name in the processed-data layout."""
    if len(keyframes) == 0:
        raise ValueError("no keyframes to export yet")
    target = export_target(export_root, name)
    target.mkdir()  # claims the name now (fails if it appeared meanwhile), before any slow work
    scene = keyframes.to_scene(len(keyframes), np.eye(4) if axis_align is None else axis_align)
    return scene.save_processed(target)
