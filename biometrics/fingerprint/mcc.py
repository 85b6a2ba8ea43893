"""Minutia Cylinder-Code (MCC) local descriptors, with numpy.

Each minutia gets a cylinder: a 16 x 16 grid of cells of radius R = 70 pixels around it, turned
with its direction, and 6 direction sections. A cell counts the neighbouring minutiae near it
(Gaussian in space, sigma_S = 28/3) whose direction relative to the centre minutia falls in the
section (Gaussian, sigma_D = 2pi/9), squashed by a sigmoid. Cells outside the print (the convex hull
of the minutiae grown by 50 pixels) are invalid and ignored when comparing. Every parameter is the
published one (R. Cappelli, M. Ferrara, D. Maltoni, "Minutia Cylinder-Code: a new representation
and matching technique for fingerprint recognition", IEEE TPAMI 32(12), 2010, table 1); none is
fitted to our test sets. Cylinders are invariant to translation and rotation of the print.

Distances are in pixels at 500 dpi; minutiae at another resolution are scaled to 500 dpi first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf, expit

from biometrics.fingerprint.minutiae import Minutiae

RADIUS = 70.0
NS = 16
ND = 6
SIGMA_S = 28.0 / 3.0
SIGMA_D = 2.0 * math.pi / 9.0
MU_PSI = 0.01
TAU_PSI = 400.0
OMEGA = 50.0
MIN_VC = 0.75  # fraction of a cylinder's cells that must be valid
MIN_M = 2  # neighbouring minutiae a cylinder needs
DELTA_S = 2.0 * RADIUS / NS
DELTA_D = 2.0 * math.pi / ND
REFERENCE_DPI = 500

_OFFSETS = (np.arange(NS) - (NS - 1) / 2.0) * DELTA_S
_GRID_U, _GRID_V = np.meshgrid(_OFFSETS, _OFFSETS, indexing="ij")
_GRID = np.stack([_GRID_U.ravel(), _GRID_V.ravel()], axis=1)  # (NS*NS, 2) cell centres, minutia frame
_IN_DISC = np.hypot(_GRID[:, 0], _GRID[:, 1]) <= RADIUS
CELLS_IN_DISC = int(_IN_DISC.sum())
_SECTION_ANGLES = -math.pi + (np.arange(1, ND + 1) - 0.5) * DELTA_D


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` wrapped into [-pi, pi)."""
    return (np.asarray(a) - np.asarray(b) + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class Cylinders:
    """The valid cylinders of one impression, as packed bits (MCC16b-like, one bit per cell and section).

    ``bits``: (n, 24) uint64, a cell-section bit is 1 when its value passes the sigmoid's midpoint;
    ``mask``: (n, 24) uint64, the valid cells (repeated over the sections); ``valid``: (n, 4) uint64,
    one bit per spatial cell; ``xy``, ``angle``: the minutiae (math orientation, y up).
    """

    bits: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    xy: np.ndarray
    angle: np.ndarray

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    def unpacked_bits(self) -> np.ndarray:
        """(n, NS*NS*ND) bool, cell-major with ND sections per cell."""
        return np.unpackbits(self.bits.view(np.uint8), axis=1).astype(bool)


def _pack(bits: np.ndarray) -> np.ndarray:
    packed = np.packbits(bits.astype(bool), axis=1)
    return np.ascontiguousarray(packed).view(np.uint64)


def _hull_distance(points: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Signed distance outside the convex hull of ``points`` (<= 0 inside), for every query point."""
    if len(points) < 3:
        centre = points.mean(axis=0)
        return np.hypot(*(query - centre).T) - 0.0
    try:
        from scipy.spatial import ConvexHull, QhullError

        hull = ConvexHull(points)
    except (QhullError, ValueError):  # collinear minutiae: no area
        centre = points.mean(axis=0)
        return np.hypot(*(query - centre).T)
    eq = hull.equations  # normal . p + offset <= 0 inside, normals are unit vectors
    return (query @ eq[:, :2].T + eq[:, 2]).max(axis=1)


def cylinders(minutiae: Minutiae) -> Cylinders:
    """The MCC cylinders of an impression (invalid cylinders dropped)."""
    a = minutiae.to_array()
    empty = Cylinders(
        np.zeros((0, NS * NS * ND // 64), np.uint64), np.zeros((0, NS * NS * ND // 64), np.uint64),
        np.zeros((0, NS * NS // 64), np.uint64), np.zeros((0, 2)), np.zeros(0),
    )
    if len(a) < MIN_M + 1:
        return empty
    scale = REFERENCE_DPI / float(minutiae.resolution_dpi or REFERENCE_DPI)
    xy = np.stack([a[:, 0] * scale, -a[:, 1] * scale], axis=1)
    theta = a[:, 2]
    n = len(a)
    cos, sin = np.cos(theta), np.sin(theta)
    # Cell centres in image space: rotate the grid by each minutia's direction.
    cx = xy[:, 0, None] + cos[:, None] * _GRID[None, :, 0] - sin[:, None] * _GRID[None, :, 1]
    cy = xy[:, 1, None] + sin[:, None] * _GRID[None, :, 0] + cos[:, None] * _GRID[None, :, 1]
    centres = np.stack([cx, cy], axis=-1)  # (n, cells, 2)
    outside = _hull_distance(xy, centres.reshape(-1, 2)).reshape(n, -1)
    valid = _IN_DISC[None, :] & (outside <= OMEGA)

    # Spatial contribution of every neighbour t to every cell of every minutia m.
    d2 = (centres[:, :, None, 0] - xy[None, None, :, 0]) ** 2 + (centres[:, :, None, 1] - xy[None, None, :, 1]) ** 2
    spatial = np.exp(-d2 / (2.0 * SIGMA_S**2)) / (SIGMA_S * math.sqrt(2.0 * math.pi))
    spatial[d2 > (3.0 * SIGMA_S) ** 2] = 0.0
    spatial[np.arange(n), :, np.arange(n)] = 0.0  # a minutia does not count itself
    # Directional contribution: integral of the Gaussian over each section.
    rel = angle_diff(theta[:, None], theta[None, :])  # (m, t)
    diff = angle_diff(_SECTION_ANGLES[None, None, :], rel[:, :, None])  # (m, t, k)
    half = DELTA_D / 2.0
    denom = SIGMA_D * math.sqrt(2.0)
    directional = 0.5 * (erf((diff + half) / denom) - erf((diff - half) / denom))
    raw = np.einsum("mct,mtk->mck", spatial, directional, optimize=True)
    values = expit(TAU_PSI * (raw - MU_PSI))
    values *= valid[:, :, None]

    dist = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    neighbours = (dist <= RADIUS + 3.0 * SIGMA_S).sum(axis=1) - 1
    keep = (valid.sum(axis=1) >= MIN_VC * CELLS_IN_DISC) & (neighbours >= MIN_M)
    if not keep.any():
        return empty
    values = values[keep]
    valid = valid[keep]
    return Cylinders(
        bits=_pack(values.reshape(len(values), -1) > 0.5),
        mask=_pack(np.repeat(valid, ND, axis=1)),
        valid=_pack(valid),
        xy=xy[keep],
        angle=theta[keep],
    )
