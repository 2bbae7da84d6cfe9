"""Fitting the frame GS-Reasoner expects: the floor (gravity) and the dominant walls of a map.

`geometry.estimate_alignment` is the public entry; this module holds its fitting and imports
nothing from the package (only numpy), so geometry.py can import it without a cycle.

Conventions: float64 numpy arrays; points (N,3) in metres, already expressed in the frame of the
up HINT (the hint is +z here; geometry.py rotates the world there first); normals are unit
vectors; `up` points away from the floor; angles are radians inside and degrees in results and
keyword names ending in _deg. A "flat cell" is a cube of the voxel grid whose points lie on a
plane (local PCA); its area is taken as cell**2, so areas do not depend on the point density.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z = np.array([0.0, 0.0, 1.0])


def rotation_to_z(v: np.ndarray) -> np.ndarray:
    """Smallest 3x3 rotation taking the unit vector `v` to +z (Rodrigues)."""
    axis = np.cross(v, Z)
    s, c = np.linalg.norm(axis), float(v @ Z)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * Kx + (1 - c) * Kx @ Kx


def rotation_about_z(angle: float) -> np.ndarray:
    """3x3 rotation about +z by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two unit vectors."""
    return float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))


# ---- flat cells (local planes) -------------------------------------------------------------

@dataclass(frozen=True)
class Cells:
    normals: np.ndarray  # (C,3) plane normals of the flat cells, sign arbitrary
    centres: np.ndarray  # (C,3) mean point of each flat cell
    of_point: np.ndarray  # (N,) index into the flat cells of each point's cell, -1 if not flat
    size: float  # cell edge in metres; each flat cell stands for size**2 of surface

    @property
    def count(self) -> int:
        return len(self.normals)

    def points_in(self, chosen: np.ndarray) -> np.ndarray:
        """(N,) bool: the points whose flat cell is `chosen` ((C,) bool); False off flat cells."""
        return np.r_[chosen, False][self.of_point]  # of_point -1 picks the appended False


def flat_cells(points: np.ndarray, size: float, min_count: int = 8, flatness: float = 0.05) -> Cells:
    """Plane normals of the points in each `size`-metre cube, from the covariance of each cube's
    points, keeping the flat cubes: smallest spread < `flatness` x the middle one (a plane, not
    an edge or clutter) with at least `min_count` points."""
    ijk = np.floor(points / size).astype(np.int64)
    ijk -= ijk.min(axis=0)
    dims = ijk.max(axis=0) + 1
    key = (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    n = len(counts)
    centred = points - points.mean(axis=0)  # keeps the second moments well conditioned
    mean = np.stack([np.bincount(inverse, centred[:, i], n) for i in range(3)], 1) / counts[:, None]
    cov = np.empty((n, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            m = np.bincount(inverse, centred[:, i] * centred[:, j], n) / counts - mean[:, i] * mean[:, j]
            cov[:, i, j] = cov[:, j, i] = m
    keep = np.flatnonzero(counts >= min_count)
    evals, evecs = np.linalg.eigh(cov[keep])
    flat = keep[evals[:, 0] < flatness * evals[:, 1]]
    index = np.full(n, -1)
    index[flat] = np.arange(len(flat))
    normals = evecs[evals[:, 0] < flatness * evals[:, 1], :, 0]
    return Cells(normals, mean[flat] + points.mean(axis=0), index[inverse], float(size))


def plane_pca(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normal, centroid, standard deviations along the 3 principal axes, smallest first)."""
    c = points.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((points - c).T))
    return evecs[:, 0], c, np.sqrt(np.clip(evals, 0.0, None))


# ---- floor ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FloorFit:
    found: bool
    normal: np.ndarray  # unit, pointing up; +z (the hint) when not found
    height: float  # the plane is {p: p . normal = height}; NaN when not found
    area_m2: float  # flat-cell area of the chosen plane (0 when none)
    tilt_deg: float  # angle between the fitted normal and the hint; NaN when no plane was fitted
    reason: str  # why it was (not) found, for logs and diagnostics


def _normal_mode(normals: np.ndarray, seeds: int = 256) -> np.ndarray:
    """The direction most normals agree with: the seed normal with most neighbours within 5 deg,
    then means over ever narrower cones (mean shift), so a slanted minority cannot pull it."""
    pick = normals[np.linspace(0, len(normals) - 1, min(seeds, len(normals))).astype(int)]
    g = pick[np.argmax((pick @ normals.T > np.cos(np.radians(5))).sum(axis=1))]
    for tol in (10.0, 5.0, 3.0):
        near = normals[normals @ g > np.cos(np.radians(tol))]
        if len(near):
            g = near.sum(axis=0) / np.linalg.norm(near.sum(axis=0))
    return g


def fit_floor(points: np.ndarray, cells: Cells, cone_deg: float = 30.0, min_area_m2: float = 1.0,
              min_spread_m: float = 0.3, rel_area: float = 0.2, band_m: float = 0.03) -> FloorFit:
    """The lowest large horizontal plane: among flat cells whose normal is within `cone_deg` of
    the hint (+z), the dominant normal direction; along it, the lowest height peak holding at
    least `min_area_m2` and `rel_area` of the largest peak; then a least-squares plane refitted
    three times on the points within `band_m` of it. A wall facing the camera is 90 degrees from
    a sound hint, outside the cone. Found only when the plane also spreads at least
    `min_spread_m` (standard deviation) in its narrower direction: a strip of floor at the foot
    of a wall does not fix the tilt about its own length."""
    none = FloorFit(False, Z.copy(), float("nan"), 0.0, float("nan"), "")
    n = cells.normals * np.where(cells.normals[:, 2:3] < 0, -1.0, 1.0)
    cand = np.flatnonzero(n[:, 2] >= np.cos(np.radians(cone_deg)))
    if len(cand) == 0:
        return _with(none, reason=f"no horizontal plane within {cone_deg:g} deg of up")
    g = _normal_mode(n[cand])
    level = cand[n[cand] @ g > np.cos(np.radians(10))]
    h = cells.centres[level] @ g
    bins = np.floor((h - h.min()) / 0.04).astype(int)
    hist = np.bincount(bins).astype(float)
    window = np.convolve(hist, [1, 1, 1], "same")  # 12 cm: a floor whose height straddles bins
    peak = (window >= np.r_[0, window[:-1]]) & (window >= np.r_[window[1:], 0])
    unit = cells.size ** 2
    large = peak & (window * unit >= max(min_area_m2, rel_area * window.max() * unit))
    if not large.any():
        return _with(none, area_m2=float(window.max() * unit),
                     reason=f"largest horizontal plane {window.max() * unit:.2f} m2 < {min_area_m2:g} m2")
    lowest = int(np.argmax(large))
    on_floor = level[np.abs(bins - lowest) <= 2]
    member = np.zeros(cells.count, bool)
    member[on_floor] = True
    seed = points[cells.points_in(member)]
    normal, centre, spread = plane_pca(seed)
    for _ in range(3):
        normal = normal if normal @ g > 0 else -normal
        inliers = points[np.abs((points - centre) @ normal) <= band_m]
        normal, centre, spread = plane_pca(inliers)
    normal = normal if normal[2] > 0 else -normal
    tilt = angle_deg(normal, Z)
    area = float(window[lowest] * unit)
    fit = FloorFit(True, normal, float(centre @ normal), area, tilt,
                   f"floor {area:.1f} m2, {spread[1]:.2f} m across, rms {100 * spread[0]:.1f} cm")
    if tilt > cone_deg:
        return _with(fit, found=False, reason=f"floor fit {tilt:.1f} deg from up, outside the {cone_deg:g} deg cone")
    if spread[1] < min_spread_m:
        return _with(fit, found=False, reason=f"floor only a strip ({spread[1]:.2f} m across < {min_spread_m:g} m)")
    return fit


def _with(fit: FloorFit, **changes) -> FloorFit:
    return FloorFit(**{**fit.__dict__, **changes})


# ---- walls ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WallFit:
    found: bool
    yaw: float  # radians in [-pi/4, pi/4): wall normal direction modulo 90 degrees; 0 when not found
    support: float  # fraction of vertical flat-cell area within 5 deg (mod 90) of yaw
    sharpness: float  # peak score over the median score across headings (1 = no preferred heading)
    reason: str


def _sharpness(xy: np.ndarray, thetas: np.ndarray, bin_m: float) -> np.ndarray:
    """For each direction theta, how concentrated the points are along it: the sum of squares of
    the (linearly binned, [1,2,1]-smoothed) histogram of their projections. Walls whose normal is
    along theta collapse into spikes, so this peaks at the wall directions; it uses the points
    themselves, not a grid, so it does not depend on the map's heading."""
    u = np.stack([np.cos(thetas), np.sin(thetas)]).astype(np.float32)
    rho = xy.astype(np.float32) @ u / np.float32(bin_m)  # (N,K)
    rho -= rho.min(axis=0) - 1.0  # a free bin below the lowest: smoothing must not drop its mass
    i0 = np.floor(rho).astype(np.int64)
    frac = (rho - i0).ravel()
    nb = int(i0.max()) + 3
    key = (i0 + np.arange(len(thetas)) * nb).ravel()
    hist = (np.bincount(key, 1.0 - frac, len(thetas) * nb)
            + np.bincount(key + 1, frac, len(thetas) * nb)).reshape(len(thetas), nb)
    smooth = hist.copy()
    smooth[:, 1:] += hist[:, :-1]
    smooth[:, :-1] += hist[:, 1:]
    return (smooth ** 2).sum(axis=1)


def _polish(xy: np.ndarray, phi: np.ndarray, theta: float, bin_m: float, max_shift_deg: float = 0.5) -> float:
    """`theta` refined by the walls themselves: along theta and its perpendicular, the (up to 4)
    densest planes; each refitted as a line (2D PCA) through its points that lie within 3 bins
    and whose own cell normal is within 10 degrees (the corner of a perpendicular wall would
    pull the line); the circular mean of those lines' normals modulo 90, weighted by their
    points. A clean wall is thinner than a bin, so the sharpness alone cannot resolve its
    heading better than bin/length (0.2 degree on a 5 m wall); the line fit can."""
    angles, weights = [], []
    for a in (theta, theta + np.pi / 2):
        along = np.isfinite(phi) & (np.abs(np.angle(np.exp(2j * np.where(np.isfinite(phi), phi - a, 0)))) <
                                    np.radians(2 * 10))
        pts = xy[along]
        if len(pts) < 50:
            continue
        rho = pts @ [np.cos(a), np.sin(a)]
        bins = np.floor((rho - rho.min()) / bin_m).astype(int)
        mass = np.convolve(np.bincount(bins), np.ones(5), "same")
        first = mass.max()
        for _ in range(4):
            b = int(np.argmax(mass))
            if mass[b] < max(0.2 * first, 50):
                break
            mass[max(b - 5, 0): b + 6] = 0
            wall = pts[np.abs(bins - b) <= 3]
            normal = np.linalg.eigh(np.cov((wall - wall.mean(axis=0)).T))[1][:, 0]
            angles.append(np.arctan2(normal[1], normal[0]))
            weights.append(len(wall))
    if not angles:
        return theta
    mean = np.angle(np.sum(np.asarray(weights) * np.exp(4j * np.asarray(angles)))) / 4
    shift = np.angle(np.exp(4j * (mean - theta))) / 4
    return theta + shift if abs(shift) <= np.radians(max_shift_deg) else theta


def fit_walls(xy: np.ndarray, phi: np.ndarray, vertical_normals: np.ndarray, cell_size: float,
              min_area_m2: float = 0.5, bin_m: float = 0.02, max_points: int = 20_000, seed: int = 0) -> WallFit:
    """Heading of the dominant walls, modulo 90 degrees, in a leveled frame. `xy`: horizontal
    coordinates of the points that are not on horizontal surfaces; `phi`: for each, the heading
    of its vertical flat cell's normal (NaN off vertical flat cells); `vertical_normals`: the
    normals of the vertical flat cells (the evidence that walls exist and their support).

    The heading maximises the sharpness of the projections onto it and onto its perpendicular
    (big planes give the highest spikes, so walls outweigh clutter): 2-degree steps over 90
    degrees on a quarter of the points and 5 cm bins, then 0.25 degree steps and `bin_m` bins
    around the best, then a parabola through the top three, then the line fits of `_polish`."""
    area = len(vertical_normals) * cell_size ** 2
    if area < min_area_m2 or len(xy) < 50:
        return WallFit(False, 0.0, 0.0, 1.0, f"vertical planes {area:.2f} m2 < {min_area_m2:g} m2")
    xy = xy - xy.mean(axis=0)
    full_xy = xy
    if len(xy) > max_points:
        xy = xy[np.random.default_rng(seed).choice(len(xy), max_points, replace=False)]
    coarse = np.radians(np.arange(0.0, 180.0, 2.0))
    s = _sharpness(xy[: max(len(xy) // 4, 50)], coarse, 2.5 * bin_m)
    s90 = s[:45] + s[45:]
    k = int(np.argmax(s90))
    step = 0.25
    fine = np.radians(2.0 * k + np.arange(-3.0, 3.0 + step / 2, step))
    f = _sharpness(xy, np.r_[fine, fine + np.pi / 2], bin_m)
    f = f[:len(fine)] + f[len(fine):]
    j = int(np.clip(np.argmax(f), 1, len(f) - 2))
    den = f[j - 1] - 2 * f[j] + f[j + 1]
    offset = 0.5 * (f[j - 1] - f[j + 1]) / den if den < 0 else 0.0
    theta = _polish(full_xy, phi, fine[j] + np.clip(offset, -1.0, 1.0) * np.radians(step), bin_m)
    yaw = float((theta + np.pi / 4) % (np.pi / 2) - np.pi / 4)
    phi = np.arctan2(vertical_normals[:, 1], vertical_normals[:, 0])
    near = np.abs(np.angle(np.exp(4j * (phi - yaw)))) < np.radians(4 * 5)
    sharp = float(s90[k] / np.median(s90))
    return WallFit(True, yaw, float(near.mean()) if len(phi) else 0.0, sharp,
                   f"walls at {np.degrees(yaw):.1f} deg, sharpness {sharp:.2f}")


# ---- both --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameFit:
    rotation: np.ndarray  # 3x3, hint frame -> model frame (level, then turn the walls onto x and y)
    floor: FloorFit
    walls: WallFit
    leveled: bool  # the rotation levels to the fitted floor (False: the hint's +z is kept)
    correction_deg: float  # how far leveling turned up (0 when kept)
    level_reason: str
    cell_size: float


def choose_cells(points: np.ndarray, size: float | None) -> Cells:
    """Flat cells of `size`, or by default 10 cm, doubled up to 40 cm while fewer than 30 % of
    the points lie in flat cells (coarse or noisy maps have too few points per small cube)."""
    cells = None
    for s in ([size] if size is not None else [0.1, 0.2, 0.4]):
        cells = flat_cells(points, s)
        if (cells.of_point >= 0).mean() >= 0.3:
            break
    return cells


def fit_frame(points: np.ndarray, *, cell: float | None = None, level: bool = True, cone_deg: float = 30.0,
              level_tol_deg: float = 0.5, min_floor_m2: float = 1.0, min_wall_m2: float = 0.5,
              seed: int = 0) -> FrameFit:
    """Floor, leveling and walls of `points` given in the hint frame (up hint = +z).

    Levels only when the floor is found and more than `level_tol_deg` from +z: below that the
    fit cannot tell a tilt from depth noise, and keeping the hint keeps a level map's frame
    exact. `level=False` trusts the hint as is (the floor is still fitted, for the report)."""
    cells = choose_cells(points, cell)
    floor = fit_floor(points, cells, cone_deg, min_floor_m2) if len(points) >= 8 else \
        FloorFit(False, Z.copy(), float("nan"), 0.0, float("nan"), "too few points")
    R_level, leveled, correction = np.eye(3), False, 0.0
    if not level:
        why = "kept up as given (level=False: world frame trusted)"
    elif not floor.found:
        why = f"kept up as given: no clear floor ({floor.reason})"
    elif floor.tilt_deg <= level_tol_deg:
        why = f"kept up as given: floor within {level_tol_deg:g} deg ({floor.tilt_deg:.2f} deg)"
    else:
        R_level, leveled, correction = rotation_to_z(floor.normal), True, floor.tilt_deg
        why = f"leveled to the floor ({floor.tilt_deg:.1f} deg)"
    normals = cells.normals @ R_level.T
    vertical = np.abs(normals[:, 2]) < np.sin(np.radians(10))
    horizontal = np.abs(normals[:, 2]) > np.cos(np.radians(30))
    keep = ~cells.points_in(horizontal)
    heading = np.where(vertical, np.arctan2(normals[:, 1], normals[:, 0]), np.nan)
    phi = np.r_[heading, np.nan][cells.of_point[keep]]
    walls = fit_walls(points[keep] @ R_level[:2].T, phi, normals[vertical], cells.size, min_wall_m2, seed=seed)
    rotation = rotation_about_z(-walls.yaw) @ R_level
    return FrameFit(rotation, floor, walls, leveled, correction, why, cells.size)
