"""Cameras in the reference's conventions: OpenCV extrinsics (world→camera), normalised intrinsics."""
from __future__ import annotations

import numpy as np


def intrinsics_from_fov(fov_rad: float) -> np.ndarray:
    """Normalised pinhole intrinsics [3, 3]: fx = fy = 0.5/tan(fov/2), cx = cy = 0.5 (image spans [0, 1])."""
    f = 0.5 / np.tan(fov_rad / 2)
    return np.array([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], np.float32)


def look_at(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world→camera 4x4 (x right, y down, z forward) for a camera at `eye` looking at `target`."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-8:  # looking along `up`
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], 0)
    E = np.eye(4)
    E[:3, :3] = R
    E[:3, 3] = -R @ eye
    return E.astype(np.float32)


def orbit_cameras(yaws, pitches, radius: float = 2.0, fov_deg: float = 40.0):
    """The reference's render/video helper cameras: eye = r·(sin yaw cos pitch, cos yaw cos pitch, sin pitch),
    up = +z. Returns (extrinsics [N, 4, 4], intrinsics [N, 3, 3])."""
    yaws, pitches = np.broadcast_arrays(np.asarray(yaws, np.float64), np.asarray(pitches, np.float64))
    ext, intr = [], []
    for yaw, pitch in zip(yaws.ravel(), pitches.ravel()):
        eye = radius * np.array([np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), np.sin(pitch)])
        ext.append(look_at(eye))
        intr.append(intrinsics_from_fov(np.deg2rad(fov_deg)))
    return np.stack(ext), np.stack(intr)


def sphere_cameras(num_views: int, radius: float = 2.0, fov_deg: float = 40.0):
    """Cameras spread evenly over the sphere around the origin (Hammersley points: yaw from i/n, the height
    sin(pitch) from the base-2 radical inverse of i), as the reference's bake and visibility views.
    Returns (extrinsics [N, 4, 4], intrinsics [N, 3, 3])."""
    i = np.arange(num_views)
    inverse = np.array([int(f"{k:032b}"[::-1], 2) / 2.0**32 for k in i])
    yaw = 2 * np.pi * (i + 0.5) / num_views
    pitch = np.arcsin(np.clip(2 * inverse - 1 + 1.0 / num_views, -1 + 1e-6, 1 - 1e-6))
    return orbit_cameras(yaw, pitch, radius, fov_deg)
