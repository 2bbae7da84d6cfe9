"""Prompts, parsing of the model's output, and the Answer it becomes.

ROS-free. The prompts are the bytes the released model was trained with, shipped as
package data (prompts.json, provenance in ../shared/data/gs_reasoner_prompts/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroundedBox:
    """One box the model wrote, axis-aligned in the model's (aligned) frame, metres."""

    label: str
    box_min: np.ndarray  # (3,)
    box_max: np.ndarray  # (3,)
    confidence: float = 0.0  # mean probability of the generated box tokens, 0..1

    @property
    def center(self) -> np.ndarray:
        return (np.asarray(self.box_min) + np.asarray(self.box_max)) / 2.0

    @property
    def size(self) -> np.ndarray:
        return np.abs(np.asarray(self.box_max) - np.asarray(self.box_min))


@dataclass
class Answer:
    """What one query returns (ROS-free; the node converts it to a service response)."""

    answer: str  # the text inside <answer>
    text: str  # everything the model generated
    objects: list[GroundedBox] = field(default_factory=list)
    think: str = ""
    keyframes_used: int = 0
    timings: dict = field(default_factory=dict)  # stage -> seconds
    untrained: bool = False  # the weights are random (no checkpoint given)
