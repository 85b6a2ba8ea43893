"""Minutiae: the points a matcher compares, in the ISO/IEC 19794-2 convention.

Coordinates are pixels from the top-left corner, x to the right and y down. The angle is in
radians in [0, 2pi), measured counter-clockwise from the x axis (as ISO 19794-2 defines it for a
ridge ending: the direction the ridge runs away from the ending, with y pointing up).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

TWO_PI = 2.0 * math.pi


class MinutiaKind(enum.IntEnum):
    """Minutia types with their ISO 19794-2 two-bit codes."""

    OTHER = 0
    ENDING = 1
    BIFURCATION = 2


@dataclass(frozen=True, slots=True)
class Minutia:
    x: int
    y: int
    angle: float
    kind: MinutiaKind = MinutiaKind.OTHER
    quality: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.angle < TWO_PI:
            object.__setattr__(self, "angle", float(self.angle) % TWO_PI)
        if not 0 <= self.quality <= 100:
            raise ValueError("minutia quality must be within 0-100")


@dataclass(frozen=True, slots=True)
class Minutiae:
    """The minutiae of one impression, with the image geometry they were measured on."""

    width: int
    height: int
    resolution_dpi: int
    points: tuple[Minutia, ...]

    def __len__(self) -> int:
        return len(self.points)

    def to_array(self) -> np.ndarray:
        """``(n, 5)`` float64 array: x, y, angle (radians), kind code, quality."""
        if not self.points:
            return np.zeros((0, 5), dtype=np.float64)
        return np.array(
            [(p.x, p.y, p.angle, int(p.kind), p.quality) for p in self.points], dtype=np.float64
        )

    @classmethod
    def from_array(
        cls, array: np.ndarray, *, width: int, height: int, resolution_dpi: int = 500
    ) -> Minutiae:
        """Inverse of :meth:`to_array` (x, y rounded to pixels; missing columns default)."""
        a = np.asarray(array, dtype=np.float64).reshape(-1, array.shape[-1] if array.size else 5)
        points = []
        for row in a:
            kind = MinutiaKind(int(row[3])) if a.shape[1] > 3 else MinutiaKind.OTHER
            quality = int(row[4]) if a.shape[1] > 4 else 0
            points.append(
                Minutia(int(round(row[0])), int(round(row[1])), float(row[2]) % TWO_PI, kind, quality)
            )
        return cls(width, height, resolution_dpi, tuple(points))
