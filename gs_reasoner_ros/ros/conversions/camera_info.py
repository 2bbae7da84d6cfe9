"""sensor_msgs/CameraInfo <-> a pinhole K, and one synced colour/depth/camera_info set (raw
Images or CompressedImages) -> the pipeline's RgbdFrame."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from gs_reasoner_ros.pipeline.images import decode_color, decode_depth
from gs_reasoner_ros.pipeline.intake import RgbdFrame
from gs_reasoner_ros.ros.conversions.stamps import header, stamp_to_sec


def camera_info_to_k(msg: CameraInfo) -> np.ndarray:
    """CameraInfo -> validated 3x3 pinhole K (positive finite focal lengths)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)):
        raise ValueError("camera_info K has NaN or inf")
    fx, fy = k[0, 0], k[1, 1]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"camera_info focal lengths must be positive, got fx={fx}, fy={fy}")
    return k


def make_camera_info(k: np.ndarray, width: int, height: int, stamp: float, frame_id: str) -> CameraInfo:
    """A plain-pinhole CameraInfo (no distortion) for replay."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return CameraInfo(header=header(frame_id, stamp), width=int(width), height=int(height),
                      distortion_model="plumb_bob", d=[0.0] * 5, k=k.ravel().tolist(),
                      r=np.eye(3).ravel().tolist(), p=p.ravel().tolist())


def decode_rgbd(color: Image, depth: Image, info: CameraInfo, camera: str = "") -> RgbdFrame:
    """Decode a synced triplet of camera `camera` (Image or CompressedImage each). The depth is
    registered to the colour camera (README: what the node needs), so K from colour camera_info
    is rescaled to the depth resolution and the colour image resampled to it; differing aspect
    ratios are rejected. The pose is looked up for the camera_info's frame (the colour optical
    frame, which the registered depth shares), else the depth's or the colour's."""
    rgb = decode_color(color)
    dep = decode_depth(depth)
    k = camera_info_to_k(info)
    (hc, wc), (hd, wd) = rgb.shape[:2], dep.shape
    if abs(hc * wd - wc * hd) > max(hd, wd):
        raise ValueError(f"colour {wc}x{hc} and depth {wd}x{hd} differ in aspect ratio")
    wi, hi = (int(info.width), int(info.height)) if info.width and info.height else (wc, hc)
    bx, by = max(1, int(info.binning_x)), max(1, int(info.binning_y))  # K describes the unbinned sensor
    if (wi // bx, hi // by) != (wc, hc):
        raise ValueError(f"camera_info says {wi}x{hi} (binning {bx}x{by}) but the colour image is {wc}x{hc}: "
                         "its K would describe another image")
    if (wi, hi) != (wd, hd):
        k = k.copy()
        k[0] *= wd / wi
        k[1] *= hd / hi
    if (hc, wc) != (hd, wd):
        import cv2

        rgb = cv2.resize(rgb, (wd, hd), interpolation=cv2.INTER_AREA if wc > wd else cv2.INTER_LINEAR)
    frame_id = info.header.frame_id or depth.header.frame_id or color.header.frame_id
    if not frame_id:
        raise ValueError("camera_info and images carry no header.frame_id, so the camera pose cannot be looked up")
    return RgbdFrame(rgb, dep, k, stamp_to_sec(depth.header.stamp), frame_id, camera)
