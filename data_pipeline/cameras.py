"""Camera distributions of the TRELLIS dataset toolkit and OpenCV camera matrices.

World frame: z-up, assets inside [-0.5, 0.5]^3 (docs/reference_facts.md#conventions).
A view is (yaw, pitch, radius, fov): the camera sits at
`radius * (cos yaw cos pitch, sin yaw cos pitch, sin pitch)` (the Blender dataset renderer's
placement), looks at the origin with world +z as "up", and has a square image whose
horizontal = vertical field of view is `fov` (radians).

Matrices returned here follow the model-side convention:
  extrinsics [4, 4] float32: world -> camera, OpenCV axes (x right, y down, z forward);
  intrinsics [3, 3] float32: normalised (the image spans [0, 1]^2), fx = fy = 0.5 / tan(fov / 2),
                              cx = cy = 0.5.
"""
from __future__ import annotations

import numpy as np

_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)

RENDER_RADIUS = 2.0
RENDER_FOV = np.deg2rad(40.0)
COND_FOV_RANGE_DEG = (10.0, 70.0)


def radical_inverse(base: int, n: int) -> float:
    """Van der Corput radical inverse of the integer n in the given base."""
    value, inv = 0.0, 1.0 / base
    scale = inv
    while n > 0:
        n, digit = divmod(n, base)
        value += digit * scale
        scale *= inv
    return value


def sphere_hammersley(i: int, n: int, offset: tuple[float, float]) -> tuple[float, float]:
    """(yaw, pitch) of point i of n on the sphere, Hammersley with a random offset
    (docs/reference_facts.md#asset-normalisation-and-rendering).

    u = i/n + o1/n, remapped u <- 2u if u < 1/4 else 2u/3 + 1/3 (more views near the equator and
    above it); v = RI_2(i) + o2; pitch = arccos(1 - 2u) - pi/2; yaw = 2 pi v.
    """
    u = i / n + offset[0] / n
    v = radical_inverse(_PRIMES[0], i) + offset[1]
    u = 2.0 * u if u < 0.25 else 2.0 / 3.0 * u + 1.0 / 3.0
    pitch = np.arccos(1.0 - 2.0 * u) - np.pi / 2.0
    yaw = v * 2.0 * np.pi
    return float(yaw), float(pitch)


def hammersley_directions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """yaw [n], pitch [n] for n views with one random offset per asset (as the reference)."""
    offset = (rng.random(), rng.random())
    yp = np.array([sphere_hammersley(i, n, offset) for i in range(n)], dtype=np.float64).reshape(n, 2)
    return yp[:, 0], yp[:, 1]


def render_views(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The 150-view VAE render distribution: Hammersley directions, r = 2, FoV 40 deg."""
    yaw, pitch = hammersley_directions(n, rng)
    return {
        "yaw": yaw,
        "pitch": pitch,
        "radius": np.full(n, RENDER_RADIUS),
        "fov": np.full(n, RENDER_FOV),
    }


def cond_views(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The 24-view condition distribution: radius with 1/r^2 ~ U[1/r_max^2, 1/r_min^2] and the FoV
    that makes the bounding sphere (radius sqrt(3)/2) fill the frame, FoV in [10, 70] deg."""
    yaw, pitch = hammersley_directions(n, rng)
    fov_min, fov_max = np.deg2rad(COND_FOV_RANGE_DEG)
    r_min = np.sqrt(3) / 2 / np.sin(fov_max / 2)
    r_max = np.sqrt(3) / 2 / np.sin(fov_min / 2)
    k = rng.uniform(1.0 / r_max**2, 1.0 / r_min**2, size=n)
    radius = 1.0 / np.sqrt(k)
    fov = 2.0 * np.arcsin(np.sqrt(3) / 2 / radius)
    return {"yaw": yaw, "pitch": pitch, "radius": radius, "fov": fov}


def camera_positions(yaw, pitch, radius) -> np.ndarray:
    """Camera centres [n, 3] in world space (Blender dataset placement)."""
    yaw, pitch, radius = map(np.asarray, (yaw, pitch, radius))
    return np.stack(
        [radius * np.cos(yaw) * np.cos(pitch), radius * np.sin(yaw) * np.cos(pitch), radius * np.sin(pitch)],
        axis=-1,
    )


def look_at_opencv_c2w(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world [n, 4, 4] for cameras at eye [n, 3] looking at target, image-up ~ +up."""
    eye = np.atleast_2d(np.asarray(eye, np.float64))
    forward = np.asarray(target, np.float64)[None] - eye
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.asarray(up, np.float64)[None])
    # Straight up/down views: any right vector perpendicular to forward will do.
    degenerate = np.linalg.norm(right, axis=-1) < 1e-9
    if np.any(degenerate):
        right[degenerate] = np.cross(forward[degenerate], np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    c2w = np.tile(np.eye(4), (eye.shape[0], 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, eye
    return c2w


def extrinsics_from_views(views: dict[str, np.ndarray]) -> np.ndarray:
    """World->camera OpenCV extrinsics [n, 4, 4] float32."""
    c2w = look_at_opencv_c2w(camera_positions(views["yaw"], views["pitch"], views["radius"]))
    return np.linalg.inv(c2w).astype(np.float32)


def intrinsics_from_fov(fov) -> np.ndarray:
    """Normalised OpenCV intrinsics [n, 3, 3] float32 for square images with the given FoV."""
    fov = np.atleast_1d(np.asarray(fov, np.float64))
    f = 0.5 / np.tan(fov / 2.0)
    k = np.zeros((fov.shape[0], 3, 3))
    k[:, 0, 0] = k[:, 1, 1] = f
    k[:, 0, 2] = k[:, 1, 2] = 0.5
    k[:, 2, 2] = 1.0
    return k.astype(np.float32)


def blender_c2w_to_extrinsics(c2w_blender: np.ndarray) -> np.ndarray:
    """Blender/OpenGL camera-to-world -> OpenCV world->camera (negate columns 1, 2, invert)."""
    c2w = np.array(c2w_blender, np.float64, copy=True)
    c2w[..., :3, 1:3] *= -1.0
    return np.linalg.inv(c2w).astype(np.float32)


def opengl_c2w_from_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """OpenCV world->camera -> OpenGL camera pose (what pyrender and Blender take)."""
    c2w = np.linalg.inv(np.asarray(extrinsics, np.float64))
    c2w[..., :3, 1:3] *= -1.0
    return c2w


def project(points: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [L, 3] into views -> (uv [V, L, 2] in [0,1] image units, depth [V, L])."""
    pts = np.concatenate([points, np.ones_like(points[:, :1])], axis=-1)
    cam = np.einsum("vij,lj->vli", extrinsics, pts)[..., :3]
    img = np.einsum("vij,vlj->vli", intrinsics, cam)
    return img[..., :2] / img[..., 2:3], cam[..., 2]
