"""Medical material: pacemakers, sternotomy wires, ports and surgical clips (metal, > 2000 HU).

Wires and leads are at least 3.6 mm thick so that they survive resampling to 3 x 3 x 6 mm.
"""

from __future__ import annotations

import numpy as np

from synth.anatomy import Anatomy
from synth.geometry import Canvas

METAL = 3000.0


def _front(anat: Anatomy, x: float) -> float:
    """y of the skin at lateral position x (anterior is negative y)."""
    ratio = min(abs(x) / anat.half_width, 0.95)
    return -anat.half_depth * (1 - ratio**2.2) ** (1 / 2.2)


def _polyline(
    cv: Canvas, pts: list[np.ndarray], radius: float, value: float, rec: np.ndarray
) -> None:
    for a, b in zip(pts[:-1], pts[1:], strict=False):
        cv.capsule(a, b, radius, value, record=rec)


def paint_device(cv: Canvas, anat: Anatomy, part: dict, rec: np.ndarray) -> None:
    kind, side = part['kind'], part['side']
    hz, hy, hx = anat.heart_centre
    top = anat.apex_z - 30.0
    svc = [
        np.array([top - 10, hy - 5, -32.0]),
        np.array([hz + anat.heart_semi[0] * 0.6, hy + 5, -30.0]),
    ]
    if kind == 'pacemaker':
        x = side * 75.0
        gen = np.array([top, _front(anat, x) + 9.0, x])
        cv.blob(gen, np.array([22.0, 6.0, 25.0]), METAL, record=rec)
        lead = [
            gen,
            np.array([top + 5, _front(anat, 45) + 25, side * 45.0]),
            *svc,
            np.array([hz - 10, hy - 10, hx - 15]),
            np.array([hz - 25, hy - 25, hx + 10]),
        ]
        _polyline(cv, lead, 1.9, METAL, rec)
    elif kind == 'port catheter':
        x = -60.0
        port = np.array([top - 10, _front(anat, x) + 10.0, x])
        cv.blob(port, np.array([12.0, 7.0, 14.0]), 2400.0, record=rec)
        _polyline(cv, [port, np.array([top, _front(anat, 40) + 30, -40.0]), *svc], 1.9, 2400.0, rec)
    elif kind == 'sternotomy wires':
        a_c, b_c, shift = anat.cavity
        y0 = shift - b_c - 5.0
        for i in range(part['count']):
            z = hz + anat.heart_semi[0] * 0.9 - 16.0 * i
            theta = np.linspace(0, 2 * np.pi, 13)
            ring = [np.array([z, y0 + 15.0 * np.sin(t), 27.0 * np.cos(t)]) for t in theta]
            _polyline(cv, ring, 1.9, METAL, rec)
    elif kind == 'surgical clips':
        base = np.array([-10.0, anat.trachea_y - 20, 30.0 * side])
        for j in range(part['count']):
            c = base + part['jitter'][j]
            cv.blob(c, np.array([3.0, 3.0, 5.0]), METAL, record=rec)
    else:
        raise ValueError(
            f'Medical material kind must be pacemaker, port catheter, sternotomy wires or surgical clips, not {kind!r}'
        )
