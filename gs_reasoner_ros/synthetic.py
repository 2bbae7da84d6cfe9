"""A procedural room with labelled furniture, rendered to RGB-D by ray casting.

It stands in for a camera where no recording exists: the demo replays it through the node,
the soak test streams it, training smoke tests use its labelled boxes, and the alignment test
rotates it. Everything is seeded and deterministic.

Frames: the room frame has its floor at z = 0, x and y centred on the room, walls on x = +-sx/2
and y = +-sy/2. The world frame is the room frame turned by `yaw` about z and shifted by
`offset`; with the defaults (yaw 0, offset 0) they coincide, so Room.objects are then world
coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import as_array, check_intrinsics, check_transform, invert_transform, quat_from_matrix, rotation_z
from .scene import Scene

# label: (size along the wall / x, depth / y, height ranges in metres, RGB, placement, mount height)
CATALOGUE = {
    "sofa": ((1.6, 2.2), (0.8, 1.0), (0.75, 0.9), (70, 90, 140), "wall", 0.0),
    "bed": ((1.4, 1.8), (1.9, 2.1), (0.5, 0.6), (225, 220, 205), "wall", 0.0),
    "cabinet": ((0.8, 1.2), (0.4, 0.6), (0.8, 1.9), (140, 95, 60), "wall", 0.0),
    "refrigerator": ((0.6, 0.8), (0.6, 0.75), (1.7, 1.9), (235, 235, 240), "wall", 0.0),
    "tv": ((0.9, 1.4), (0.06, 0.1), (0.55, 0.8), (25, 25, 30), "wall", 0.95),
    "bookshelf": ((0.8, 1.2), (0.3, 0.4), (1.6, 2.0), (160, 120, 80), "wall", 0.0),
    "desk": ((1.0, 1.4), (0.6, 0.8), (0.72, 0.76), (190, 160, 120), "wall", 0.0),
    "nightstand": ((0.4, 0.5), (0.35, 0.45), (0.5, 0.6), (120, 80, 50), "wall", 0.0),
    "table": ((0.8, 1.6), (0.6, 1.0), (0.7, 0.78), (150, 110, 70), "free", 0.0),
    "chair": ((0.45, 0.55), (0.45, 0.55), (0.8, 1.0), (200, 60, 50), "free", 0.0),
    "trash can": ((0.28, 0.35), (0.28, 0.35), (0.35, 0.45), (90, 150, 90), "free", 0.0),
}
HEIGHT = 2.6
WALL_COLORS = np.array([(200, 190, 170), (180, 195, 205), (205, 185, 185), (190, 200, 175)], np.float32)
FLOOR_COLORS = np.array([(150, 120, 90), (130, 100, 75)], np.float32)
CEILING_COLOR = np.array((240, 240, 235), np.float32)


@dataclass
class Room:
    size: np.ndarray  # (3,) extents in the room frame (x, y, height)
    objects: list  # [(label, box_min (3,), box_max (3,))] axis-aligned in the room frame
    colors: list  # [(3,) uint8] per object
    yaw: float = 0.0  # radians, room frame -> world about z
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))  # room origin in the world
    wall_colors: np.ndarray = field(default_factory=lambda: WALL_COLORS.copy())  # (4,3) for -x, +x, -y, +y
    floor_colors: np.ndarray = field(default_factory=lambda: FLOOR_COLORS.copy())  # (2,3) checker tones
    tile: float = 0.5  # floor checker edge, metres

    @property
    def world_from_room(self) -> np.ndarray:
        T = rotation_z(self.yaw)
        T[:3, 3] = self.offset
        return T

    def world_boxes(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """The objects as oriented world boxes: [(label, center, quat xyzw, size)]."""
        T = self.world_from_room
        q = quat_from_matrix(T[:3, :3])
        return [(label, T[:3, :3] @ ((lo + hi) / 2) + T[:3, 3], q, hi - lo) for label, lo, hi in self.objects]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The room's interior as (min, max) in the room frame."""
        return np.array([-self.size[0] / 2, -self.size[1] / 2, 0.0]), np.array([*self.size[:2] / 2, self.size[2]])


def make_room(seed: int = 0, yaw_deg: float = 0.0, offset=(0.0, 0.0, 0.0), n_objects: int | None = None) -> Room:
    """A seeded room 4-6 m x 3-5 m x 2.6 m with 4-8 distinct labelled furniture boxes that do not
    overlap, tall pieces against the walls so a camera at 1.5 m near the centre stays free."""
    rng = np.random.default_rng(seed)
    size = np.array([rng.uniform(4.0, 6.0), rng.uniform(3.0, 5.0), HEIGHT])
    count = int(rng.integers(4, 9)) if n_objects is None else int(n_objects)
    if not 1 <= count <= len(CATALOGUE):
        raise ValueError(f"n_objects must be in 1..{len(CATALOGUE)}, got {count}")
    labels = list(rng.permutation(list(CATALOGUE)))
    objects, colors = [], []
    for label in labels:
        if len(objects) == count:
            break
        along, depth, height, _, placement, mount = CATALOGUE[label]
        box = place_box(rng, (along, depth, height, placement, mount), size, objects)
        if box is None:
            continue
        objects.append((str(label), *box))
        tint = rng.integers(-15, 16, 3)
        colors.append(np.clip(np.array(CATALOGUE[label][3]) + tint, 0, 255).astype(np.uint8))
    return Room(size, objects, colors, float(np.deg2rad(yaw_deg)), as_array(offset, "offset", (3,)))


def place_box(rng, spec, size, objects, tries: int = 60):
    """An axis-aligned (min, max) for a piece with spec (along, depth, height ranges, placement
    "wall" | "free", mount height) in a room of `size` that keeps 10 cm from `objects`
    [(label, min, max)], or None when it does not fit."""
    along, depth, height, placement, mount = spec
    half = size[:2] / 2
    centre_keep = 0.6 * np.minimum(half, 1.2)  # the camera orbit needs free space near the centre
    for _ in range(tries):
        a, d, h = rng.uniform(*along), rng.uniform(*depth), rng.uniform(*height)
        if placement == "wall":
            wall = rng.integers(4)  # 0: -x, 1: +x, 2: -y, 3: +y
            if wall < 2:
                ext = np.array([d, a])
                c = np.array([(-1) ** (wall + 1) * (half[0] - d / 2), rng.uniform(-half[1] + a / 2, half[1] - a / 2)])
            else:
                ext = np.array([a, d])
                c = np.array([rng.uniform(-half[0] + a / 2, half[0] - a / 2), (-1) ** (wall + 1) * (half[1] - d / 2)])
        else:
            ext = np.array([a, d])
            c = rng.uniform(-half + ext / 2 + 0.2, half - ext / 2 - 0.2)
            if h > 1.2 and np.all(np.abs(c) < centre_keep):
                continue
        lo = np.array([*(c - ext / 2), mount])
        hi = np.array([*(c + ext / 2), mount + h])
        if all(np.any(lo[:2] > ohi[:2] + 0.1) or np.any(hi[:2] < olo[:2] - 0.1) for _, olo, ohi in objects):
            return lo, hi
    return None


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """A Kinect-like pinhole camera (525 px focal length at 640 px wide) for a width x height image."""
    f = 525.0 * width / 640.0
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def render_rgbd(room: Room, K, pose, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H,W,3), depth float32 metres (H,W)) seen by a pinhole camera with intrinsics K
    and camera-to-world optical pose, by casting one ray per integer pixel coordinate against the
    room's inside and the furniture boxes (slab method, vectorised over all rays)."""
    K = check_intrinsics(K)
    pose = check_transform(pose, "pose")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    cam_in_room = invert_transform(room.world_from_room) @ pose
    origin = cam_in_room[:3, 3]
    lo_room, hi_room = room.bounds()
    if np.any(origin <= lo_room) or np.any(origin >= hi_room):
        raise ValueError(f"camera at {origin} (room frame) is outside the room")
    u = (np.arange(width, dtype=np.float32) - K[0, 2]) / K[0, 0]
    v = (np.arange(height, dtype=np.float32) - K[1, 2]) / K[1, 1]
    R = cam_in_room[:3, :3].astype(np.float32)
    # One row per axis (3,N) keeps every operation on contiguous 1-D arrays. The ray parameter
    # t along d (whose camera z component is 1) is the depth itself.
    d = np.stack([(R[a, 0] * u[None, :] + R[a, 1] * v[:, None] + R[a, 2]).ravel() for a in range(3)])
    d[np.abs(d) < 1e-9] = 1e-9
    inv = 1.0 / d
    o = origin.astype(np.float32)

    t = np.full(d.shape[1], np.inf, np.float32)
    surface = np.zeros(d.shape[1], np.int64)
    for a in range(3):  # from inside the room every ray leaves it through one wall, floor or ceiling
        pos = d[a] > 0
        exit_a = np.where(pos, (hi_room[a] - o[a]) * inv[a], (lo_room[a] - o[a]) * inv[a])
        closer = exit_a < t
        t = np.where(closer, exit_a, t)
        code = np.where(pos, -2, -1) if a == 2 else 2 * a + pos
        surface = np.where(closer, code, surface)
    for i, (_, blo, bhi) in enumerate(room.objects):
        t_near = np.zeros_like(t)
        t_far = np.full_like(t, np.inf)
        face = np.zeros(d.shape[1], np.int64)
        for a in range(3):
            t1 = (np.float32(blo[a]) - o[a]) * inv[a]
            t2 = (np.float32(bhi[a]) - o[a]) * inv[a]
            near = np.minimum(t1, t2)
            face = np.where(near > t_near, a, face)
            t_near = np.maximum(t_near, near)
            t_far = np.minimum(t_far, np.maximum(t1, t2))
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < t)
        t = np.where(hit, t_near, t)
        surface = np.where(hit, 100 + 3 * i + face, surface)

    points = (o[:, None] + d * t).T
    rgb = _shade(room, surface, points)
    return rgb.reshape(height, width, 3), t.reshape(height, width).astype(np.float32)


def _shade(room: Room, surface: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Colours of the hit points: per-wall paint, a checkered floor, and furniture shaded by
    which face was hit so box edges stay visible."""
    out = np.empty((len(surface), 3), np.float32)
    wall = (surface >= 0) & (surface < 4)
    out[wall] = np.asarray(room.wall_colors, np.float32)[surface[wall]]
    floor = surface == -1
    tiles = (np.floor(points[floor, 0] / room.tile) + np.floor(points[floor, 1] / room.tile)).astype(int) & 1
    out[floor] = np.asarray(room.floor_colors, np.float32)[tiles]
    out[surface == -2] = CEILING_COLOR
    furniture = surface >= 100
    if furniture.any():
        obj, face_axis = np.divmod(surface[furniture] - 100, 3)
        base = np.array(room.colors, np.float32)[obj]
        out[furniture] = base * np.array([0.8, 0.9, 1.0], np.float32)[face_axis][:, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world optical pose (x right, y down, z forward) at `position` looking at `target`."""
    p, tgt, up = as_array(position, "position", (3,)), as_array(target, "target", (3,)), as_array(up, "up", (3,))
    forward = tgt - p
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("look_at target must differ from the position")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at direction is parallel to up")
    right /= np.linalg.norm(right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    T[:3, 3] = p
    return T


def camera_path(room: Room, n: int, seed: int = 0, height: float = 1.5, radius_fraction: float = 0.25,
                direction: int = 1, tilt_deg: float = 15.0) -> np.ndarray:
    """(n,4,4) world camera-to-world optical poses along one smooth loop: positions on an ellipse
    (semi-axes radius_fraction of the room's extents, walked in `direction` +1/-1) around the room
    centre at about `height`, each looking across the room (through the centre, with a slowly
    wandering heading) and tilted tilt_deg +- 5 degrees down."""
    if int(n) < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    phase, wobble = rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.15, 0.35)
    s = direction * np.linspace(0.0, 2 * np.pi, int(n), endpoint=False) + phase[0]
    radius = radius_fraction * room.size[:2]
    pos = np.stack([radius[0] * np.cos(s), radius[1] * np.sin(s),
                    height + 0.05 * np.sin(3 * s + phase[1])], axis=1)
    heading = s + np.pi + wobble * np.sin(2 * s + phase[1])
    tilt = np.deg2rad(tilt_deg + 5 * np.sin(s))
    look = np.stack([np.cos(heading) * np.cos(tilt), np.sin(heading) * np.cos(tilt), -np.sin(tilt)], axis=1)
    W = room.world_from_room
    return np.stack([W @ look_at(p, p + f) for p, f in zip(pos, look)])


def synthetic_scene(seed: int = 0, n_frames: int = 8, width: int = 640, height: int = 480,
                    yaw_deg: float = 0.0, period_s: float = 1.0) -> tuple[Scene, Room]:
    """A rendered Scene of `n_frames` views along `camera_path` (stamps `period_s` apart) and its Room."""
    room = make_room(seed, yaw_deg=yaw_deg)
    K = default_intrinsics(width, height)
    poses = camera_path(room, n_frames, seed)
    frames = [render_rgbd(room, K, T, width, height) for T in poses]
    scene = Scene(np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]), K, poses,
                  stamps=np.arange(n_frames) * float(period_s))
    return scene, room
