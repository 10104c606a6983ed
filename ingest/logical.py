"""Logical defects on the simulated line: right-looking parts in the wrong arrangement.

The product is an assembled bracket: a steel plate with four holes in a 2 x 2 grid, a brass
bolt in the top-left hole, a blue steel bolt in the bottom-right one, the other two holes
open, and a locating notch in the plate's top edge.  Plates sit in a fixture, so they vary only
a little (a few pixels, a few degrees, lighting); that is the natural variation of normal parts.

A logical defect changes the arrangement, not the look of any one patch:

========================  =============================================  ==========================
kind                      what                                           ground-truth mask
========================  =============================================  ==========================
``missing_fastener``      the brass bolt is not there (an open hole)     where the bolt should be
``extra_fastener``        a third bolt in one of the open holes          the extra bolt
``swapped_fasteners``     brass and blue bolts exchange places           both bolts
``misplaced_fastener``    the brass bolt sits in an open hole instead    both holes
``missing_hole``          an open hole was not drilled                   where the hole should be
``wrong_colour``          a plate of the wrong (anodised gold) finish    the plate
========================  =============================================  ==========================

:class:`LogicalLineSimulator` is a :class:`ingest.simulator.LineSimulator` (so it streams too);
:func:`write_logical_set` writes a labelled set in the MVTec layout with masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ingest.simulator import LineSimulator

LOGICAL_KINDS: tuple[str, ...] = ("missing_fastener", "extra_fastener", "swapped_fasteners",
                                  "misplaced_fastener", "missing_hole", "wrong_colour")

BRASS = (60, 165, 205)  # BGR
BLUE = (170, 95, 45)
STEEL = (190, 192, 196)
GOLD = (70, 170, 215)
# holes in plate coordinates (fractions of the half-side): top-left, top-right, bottom-right, bottom-left
HOLES = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))
NORMAL_BOLTS = {0: BRASS, 2: BLUE}


class LogicalLineSimulator(LineSimulator):
    """Triggered camera over assembled brackets; a fraction ``defect_rate`` has a logical defect."""

    def __init__(self, *, seed: int = 0, width: int = 256, height: int = 256, defect_rate: float = 0.1,
                 count: int | None = None, fps: float | None = None, product: str | None = "bracket",
                 part_prefix: str = "B", defect_kinds: tuple[str, ...] = LOGICAL_KINDS):
        unknown = set(defect_kinds) - set(LOGICAL_KINDS)
        if unknown:
            raise ValueError(f"unknown logical defects {sorted(unknown)} (choose from {', '.join(LOGICAL_KINDS)})")
        super().__init__(seed=seed, width=width, height=height, defect_rate=defect_rate, count=count, fps=fps,
                         product=product, part_prefix=part_prefix, defect_kinds=defect_kinds)
        self.name = f"sim-logical:seed={seed}"

    def render(self, part_index: int, *, phase: int = 0, defect: str | None = None,
               frame_index: int | None = None) -> np.ndarray:
        return self.render_with_mask(part_index, defect=defect, frame_index=frame_index)[0]

    def render_with_mask(self, part_index: int, *, defect: str | None = None,
                         frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 image, bool mask of the defect's area) for one part."""
        w, h = self.width, self.height
        frame_index = part_index if frame_index is None else frame_index
        rng = np.random.default_rng([self.seed, part_index, 4])
        noise_rng = np.random.default_rng([self.seed, frame_index, 5])
        s = min(w, h) / 256.0

        belt = np.full((h, w), 58.0, np.float32)
        for x in range(-24 + (frame_index * 5) % 24, w, 24):
            cv2.line(belt, (x, 0), (x, h - 1), 48.0, 3)
        img = cv2.merge([belt, belt * 1.02, belt * 0.98])

        # the plate, in its fixture: small jitter in place, angle and lighting
        cx, cy = w / 2 + rng.uniform(-5, 5) * s, h / 2 + rng.uniform(-5, 5) * s
        ang = math.radians(rng.uniform(-4, 4))
        half = 80 * s * (1 + rng.uniform(-0.02, 0.02))
        light = rng.uniform(0.9, 1.1)
        ca, sa = math.cos(ang), math.sin(ang)
        # drawn for every part alike, so a defect changes nothing but itself
        turns = rng.uniform(0, math.pi / 3, size=4)
        odd_hole = int(rng.choice([1, 3]))
        odd_colour = BRASS if rng.random() < 0.5 else BLUE

        def at(u: float, v: float) -> tuple[int, int]:  # plate coordinates -> pixel
            return int(round(cx + half * (u * ca - v * sa))), int(round(cy + half * (u * sa + v * ca)))

        corners = np.array([at(-1, -1), at(1, -1), at(1, 1), at(-1, 1)], np.int32)
        plate = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(plate, corners, 1, cv2.LINE_AA)
        notch = np.array([at(-0.12, -1.01), at(0.12, -1.01), at(0, -0.84)], np.int32)
        cv2.fillConvexPoly(plate, notch, 0, cv2.LINE_AA)
        shadow = cv2.GaussianBlur(np.roll(plate, (int(5 * s), int(4 * s)), (0, 1)).astype(np.float32), (0, 0), 4 * s)
        img *= (1.0 - 0.45 * shadow)[..., None]
        finish = GOLD if defect == "wrong_colour" else STEEL
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = light * (1.0 + 0.08 * ((xx - cx) - (yy - cy)) / max(half, 1.0))  # light from the top left
        metal = np.stack([np.float32(c) * shade for c in finish], axis=-1)
        pm = plate.astype(np.float32)[..., None]
        img = img * (1 - pm) + metal * pm

        mask = np.zeros((h, w), np.uint8)
        if defect == "wrong_colour":
            mask |= plate
        r_hole, r_bolt = 13 * s, 17 * s
        holes = [at(*p) for p in HOLES]
        bolts = dict(NORMAL_BOLTS)
        drilled = [True] * 4
        if defect == "missing_fastener":
            del bolts[0]
            _disc(mask, holes[0], r_bolt)
        elif defect == "extra_fastener":
            bolts[odd_hole] = odd_colour
            _disc(mask, holes[odd_hole], r_bolt)
        elif defect == "swapped_fasteners":
            bolts = {0: BLUE, 2: BRASS}
            _disc(mask, holes[0], r_bolt)
            _disc(mask, holes[2], r_bolt)
        elif defect == "misplaced_fastener":
            del bolts[0]
            bolts[odd_hole] = BRASS
            _disc(mask, holes[0], r_bolt)
            _disc(mask, holes[odd_hole], r_bolt)
        elif defect == "missing_hole":
            drilled[odd_hole] = False
            _disc(mask, holes[odd_hole], r_bolt)

        for k, (x, y) in enumerate(holes):
            if drilled[k]:
                cv2.circle(img, (x, y), int(round(r_hole)), (30, 30, 30), -1, cv2.LINE_AA)
                cv2.circle(img, (x, y), int(round(r_hole + 2 * s)), (215, 217, 220), max(1, int(s)), cv2.LINE_AA)
        for k, colour in bolts.items():
            _bolt(img, holes[k], r_bolt, colour, light, ang + turns[k])

        img += 2.0 * noise_rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img, 0, 255).astype(np.uint8), mask.astype(bool)


def _disc(mask: np.ndarray, centre: tuple[int, int], r: float) -> None:
    cv2.circle(mask, centre, int(round(r)), 1, -1)


def _bolt(img: np.ndarray, centre: tuple[int, int], r: float, colour: tuple[int, int, int], light: float,
          turn: float) -> None:
    """A hexagonal bolt head with a highlight, turned at random."""
    x, y = centre
    hexagon = np.array([(int(round(x + r * math.cos(turn + k * math.pi / 3))),
                         int(round(y + r * math.sin(turn + k * math.pi / 3)))) for k in range(6)], np.int32)
    c = tuple(float(min(255, v * light)) for v in colour)
    cv2.fillConvexPoly(img, hexagon, c, cv2.LINE_AA)
    cv2.polylines(img, [hexagon], True, tuple(0.6 * v for v in c), max(1, int(r / 10)), cv2.LINE_AA)
    cv2.circle(img, (int(x - r / 3), int(y - r / 3)), max(1, int(r / 4)), tuple(min(255.0, v * 1.3) for v in c), -1,
               cv2.LINE_AA)


def write_logical_set(root: str | Path, *, n_train: int = 200, n_good: int = 40, n_per_kind: int = 20,
                      seed: int = 0, size: int = 256, kinds: tuple[str, ...] = LOGICAL_KINDS,
                      fmt: str = "png") -> dict[str, int]:
    """Write an MVTec-layout set: ``train/good``, ``test/good``, ``test/<kind>`` and
    ``ground_truth/<kind>/<stem>_mask.png``.  Returns the number of images per folder."""
    root = Path(root)
    sim = LogicalLineSimulator(seed=seed, width=size, height=size, defect_kinds=kinds)
    ext = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}[fmt]
    counts: dict[str, int] = {}
    index = 0

    def put(folder: str, defect: str | None) -> None:
        nonlocal index
        image, mask = sim.render_with_mask(index, defect=defect)
        out = root / folder
        out.mkdir(parents=True, exist_ok=True)
        name = f"{index:06d}"
        if not cv2.imwrite(str(out / f"{name}{ext}"), image):
            raise OSError(f"cannot write {out / name}{ext}")
        if defect is not None:
            gt = root / "ground_truth" / defect
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt / f"{name}_mask.png"), mask.astype(np.uint8) * 255)
        counts[folder] = counts.get(folder, 0) + 1
        index += 1

    for _ in range(n_train):
        put("train/good", None)
    for _ in range(n_good):
        put("test/good", None)
    for kind in kinds:
        for _ in range(n_per_kind):
            put(f"test/{kind}", kind)
    return counts
