"""Generated rooms for the demo model: varied furniture layouts, rendered and recorded as the node
records them.

`demo_room(seed)` draws a room 3.5-7 m x 3-6 m x 2.4-3 m with 5-11 labelled pieces from
`DEMO_CATALOGUE` (several chairs, lamps, nightstands, cabinets or bookshelves where the draw
says so), unlabelled clutter boxes as distractors, and its own wall paint, two-tone floor and
tile size; every piece takes one of its class's colours with a small tint. `camera_walk(room)`
is a loop of 28-44 views at 1.3-1.7 m with its own radius, direction and tilt.

`record_room(room, poses, root, name)` renders the views and records them through the node's
own code: every view is offered to a KeyframeStore (the node's keyframe policy defaults), the
world -> model alignment is estimated from the keyframes' points as the query engine does, and
pipeline.export.export_scene writes the processed-data folder (the code behind ~/export_scene).
What it returns (`RecordedRoom`) holds the room's boxes in that folder's model frame.

Rendering uses gs_reasoner_ros.synthetic (a test fixture; tools and training may use it, the
node never does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gs_reasoner_ros import geometry
from gs_reasoner_ros.pipeline.export import export_scene
from gs_reasoner_ros.scene_memory.frame import Frame
from gs_reasoner_ros.scene_memory.keyframes import KeyframeStore
from gs_reasoner_ros.synthetic import Room, default_intrinsics, place_box, render_rgbd
from gs_reasoner_ros.synthetic import camera_path as synthetic_camera_path

# label: (along the wall, depth, height ranges in metres, placement, mount height, most instances,
#         colours to draw from)
DEMO_CATALOGUE = {
    "sofa": ((1.6, 2.2), (0.8, 1.0), (0.75, 0.9), "wall", 0.0, 1, ((70, 90, 140), (120, 50, 50), (95, 120, 85))),
    "bed": ((1.4, 1.8), (1.9, 2.1), (0.5, 0.6), "wall", 0.0, 1, ((225, 220, 205), (200, 215, 235))),
    "cabinet": ((0.8, 1.2), (0.4, 0.6), (0.8, 1.9), "wall", 0.0, 2, ((140, 95, 60), (110, 75, 45))),
    "refrigerator": ((0.6, 0.8), (0.6, 0.75), (1.7, 1.9), "wall", 0.0, 1, ((235, 235, 240), (190, 195, 200))),
    "tv": ((0.9, 1.4), (0.06, 0.1), (0.55, 0.8), "wall", 0.95, 1, ((25, 25, 30), (45, 45, 55))),
    "bookshelf": ((0.8, 1.2), (0.3, 0.4), (1.6, 2.0), "wall", 0.0, 2, ((160, 120, 80), (90, 60, 40))),
    "desk": ((1.0, 1.4), (0.6, 0.8), (0.72, 0.76), "wall", 0.0, 1, ((190, 160, 120), (230, 230, 225))),
    "nightstand": ((0.4, 0.5), (0.35, 0.45), (0.5, 0.6), "wall", 0.0, 2, ((120, 80, 50), (170, 130, 90))),
    "table": ((0.8, 1.6), (0.6, 1.0), (0.7, 0.78), "free", 0.0, 1, ((150, 110, 70), (100, 100, 110))),
    "chair": ((0.45, 0.55), (0.45, 0.55), (0.8, 1.0), "free", 0.0, 4, ((200, 60, 50), (60, 140, 200), (230, 180, 40))),
    "trash can": ((0.28, 0.35), (0.28, 0.35), (0.35, 0.45), "free", 0.0, 2, ((90, 150, 90), (80, 80, 80))),
    "lamp": ((0.3, 0.4), (0.3, 0.4), (1.4, 1.7), "wall", 0.0, 2, ((245, 215, 90), (250, 245, 200))),
}
CLUTTER = "clutter"  # unlabelled distractor boxes: rendered, never asked about
CLUTTER_SPEC = ((0.2, 0.45), (0.2, 0.45), (0.15, 0.5), "free", 0.0)
# The node's keyframe policy (ros/params.py defaults), so recordings keep what the node keeps.
KEYFRAME_POLICY = dict(max_keyframes=200, min_translation=0.2, min_rotation_deg=15.0, min_interval_s=0.2,
                       max_interval_s=5.0)


def demo_room(seed: int) -> Room:
    """A seeded room with labelled furniture (several instances of some classes) and clutter."""
    rng = np.random.default_rng([seed, 14])
    size = np.array([rng.uniform(3.5, 7.0), rng.uniform(3.0, 6.0), rng.uniform(2.4, 3.0)])
    wanted = int(rng.integers(5, 12))
    labels = list(rng.permutation(list(DEMO_CATALOGUE)))
    objects, colors = [], []
    for label in labels:
        along, depth, height, placement, mount, most, palette = DEMO_CATALOGUE[label]
        for _ in range(int(rng.integers(1, most + 1))):
            if len(objects) >= wanted:
                break
            box = place_box(rng, (along, depth, height, placement, mount), size, objects)
            if box is not None:
                objects.append((str(label), *box))
                colors.append(_tinted(rng, palette))
    for _ in range(int(rng.integers(0, 4))):
        box = place_box(rng, CLUTTER_SPEC, size, objects)
        if box is not None:
            objects.append((CLUTTER, *box))
            colors.append(rng.integers(60, 200, 3).astype(np.uint8))
    walls = np.repeat(rng.uniform(150, 235, (1, 3)), 4, axis=0) + rng.uniform(-12, 12, (4, 3))
    floor = rng.uniform(70, 170, 3)
    floors = np.stack([floor, floor * rng.uniform(0.75, 0.9)])
    return Room(size, objects, colors, wall_colors=walls.astype(np.float32), floor_colors=floors.astype(np.float32),
                tile=float(rng.uniform(0.3, 0.8)))


def _tinted(rng: np.random.Generator, palette) -> np.ndarray:
    base = np.array(palette[int(rng.integers(len(palette)))], float)
    return np.clip(base + rng.integers(-15, 16, 3), 0, 255).astype(np.uint8)


def camera_walk(room: Room, seed: int) -> np.ndarray:
    """(n,4,4) camera-to-world optical poses of one loop through the room (n in 28..44)."""
    rng = np.random.default_rng([seed, 41])
    return synthetic_camera_path(room, int(rng.integers(28, 45)), seed=seed, height=float(rng.uniform(1.3, 1.7)),
                                 radius_fraction=float(rng.uniform(0.15, 0.3)),
                                 direction=int(rng.choice([-1, 1])), tilt_deg=float(rng.uniform(10, 22)))


@dataclass
class RecordedRoom:
    """A room as recorded: its processed-data folder and its labelled boxes in that folder's
    model frame (the alignment the export wrote), with the viewer of the first keyframe."""

    path: Path
    labels: list[str]  # per labelled object
    boxes: np.ndarray  # (n, 6) min/max corners in the model frame
    axis_align: np.ndarray  # (4,4) world -> model frame of the recording
    viewer: np.ndarray  # (4,4) first keyframe's camera-to-model pose
    keyframes: int


def render_views(room: Room, poses: np.ndarray, width: int = 320, height: int = 240,
                 period_s: float = 0.5) -> list[Frame]:
    """The views as the node's intake hands them to scene memory (stamps period_s apart)."""
    K = default_intrinsics(width, height)
    frames = []
    for i, pose in enumerate(poses):
        rgb, depth = render_rgbd(room, K, pose, width, height)
        frames.append(Frame(rgb, depth, K, pose, i * period_s))
    return frames


def keyframes_of(frames: list[Frame]) -> KeyframeStore:
    """A KeyframeStore with the node's default policy after offering every frame in order."""
    store = KeyframeStore(**KEYFRAME_POLICY)
    for frame in frames:
        store.offer(frame)
    return store


def alignment_of(store: KeyframeStore, stride: int = 4) -> np.ndarray:
    """World -> model frame as the query engine estimates it (walls, floor, centred), from the
    keyframes' points instead of the voxel map."""
    frames = store.frames()
    points = np.concatenate([geometry.transform_points(f.pose, geometry.unproject_depth(f.depth, f.K, stride)).reshape(-1, 3)
                             for f in frames])
    poses = np.stack([f.pose for f in frames])
    return geometry.estimate_alignment(points, poses=poses)


def model_frame_boxes(room: Room, A: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Labels and (n,6) min/max boxes of the labelled objects in the model frame of A."""
    labels, boxes = [], []
    T = A @ room.world_from_room
    for label, lo, hi in room.objects:
        if label == CLUTTER:
            continue
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        moved = geometry.transform_points(T, corners)
        labels.append(label)
        boxes.append(np.concatenate([moved.min(axis=0), moved.max(axis=0)]))
    return labels, np.asarray(boxes, float).reshape(-1, 6)


def record_room(room: Room, poses: np.ndarray, root, name: str, width: int = 320, height: int = 240
                ) -> RecordedRoom:
    """Render, keep keyframes, align and export as the node does; the labelled boxes come back in
    the exported folder's model frame."""
    store = keyframes_of(render_views(room, poses, width, height))
    A = alignment_of(store)
    path = export_scene(store, root, name, A)
    labels, boxes = model_frame_boxes(room, A)
    return RecordedRoom(Path(path), labels, boxes, A, A @ store.frames()[0].pose, len(store))
