"""A synthetic production line for demos and tests: parts passing a camera on a conveyor.

Each part is a machined flange (a disc with a bore and four bolt holes) lying on a moving
belt; position, rotation and lighting vary a little from part to part, as on a real line.  A
fraction ``defect_rate`` of the parts carries a painted defect: ``scratch``, ``spot``
(contamination), ``crack`` or ``missing_hole``.

Everything is a pure function of ``(seed, frame index)``: the same seed gives the same images
and part ids, in any process, at any pace (only ``captured_at`` is the wall clock).  The ground
truth travels in ``frame.info`` (``defect``: ``None`` or the kind; ``part_index``), never on the
wire.

:func:`write_normal_parts` writes N defect-free part images to a folder, e.g. to train a quick
first model for the local stack; :func:`write_parts` writes a labelled mix.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ingest.frames import Frame, utcnow
from ingest.sources import FrameSource, SourceError

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack", "missing_hole")
# camera faults that change every frame from ``fault_after`` on (drift, not defects):
# a dirty lens (blur and a veil of scattered light), dimmed lighting, a camera knocked sideways
FAULTS: tuple[str, ...] = ("dirty-lens", "dim", "shift")


class LineSimulator(FrameSource):
    """Synthetic camera over a conveyor.

    ``frames_per_part`` > 1 shows each part several times while it crosses the field of view
    (free-running camera); 1 (default) is a triggered camera with the part centred.  ``count``
    ends the stream after that many frames (``None``: endless).  ``product`` is reported on
    every frame.
    """

    def __init__(self, *, seed: int = 0, width: int = 256, height: int = 256,
                 defect_rate: float = 0.1, frames_per_part: int = 1, count: int | None = None,
                 fps: float | None = None, product: str | None = "flange",
                 part_prefix: str = "P", defect_kinds: tuple[str, ...] = DEFECT_KINDS,
                 fault: str | None = None, fault_after: int = 0):
        super().__init__(fps=fps)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown simulator fault {fault!r}; one of {', '.join(FAULTS)}")
        if fault_after < 0:
            raise ValueError("fault_after must be >= 0")
        if width < 64 or height < 64:
            raise ValueError("the simulator needs at least 64x64 pixels")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError("defect_rate must be within 0..1")
        if frames_per_part < 1:
            raise ValueError("frames_per_part must be >= 1")
        self.seed = seed
        self.width, self.height = width, height
        self.defect_rate = defect_rate
        self.frames_per_part = frames_per_part
        self.count = count
        self.product = product
        self.part_prefix = part_prefix
        self.defect_kinds = tuple(defect_kinds)
        self.fault, self.fault_after = fault, fault_after
        self.name = f"sim:seed={seed}"
        self._index = 0

    def open(self) -> None:
        self.is_open = True

    def read(self) -> Frame | None:
        if not self.is_open:
            raise SourceError("simulator is not open")
        if self.count is not None and self._index >= self.count:
            return None
        frame = self.frame(self._index)
        self._index += 1
        return frame

    # -- deterministic rendering -------------------------------------------------------------

    def part_id(self, part_index: int) -> str:
        return f"{self.part_prefix}{self.seed}-{part_index:06d}"

    def defect_of(self, part_index: int) -> str | None:
        """The defect kind of a part (``None`` for a good part); deterministic."""
        rng = np.random.default_rng([self.seed, part_index, 1])
        if rng.random() >= self.defect_rate or not self.defect_kinds:
            return None
        return self.defect_kinds[int(rng.integers(len(self.defect_kinds)))]

    def frame(self, index: int) -> Frame:
        """Frame number ``index`` of this line (the same for the same seed, always)."""
        part_index, phase = divmod(index, self.frames_per_part)
        defect = self.defect_of(part_index)
        image = self.render(part_index, phase=phase, defect=defect, frame_index=index)
        fault = self.fault if self.fault is not None and index >= self.fault_after else None
        if fault is not None:
            image = apply_fault(image, fault)
        return Frame(
            image=image,
            captured_at=utcnow(),
            part_id=self.part_id(part_index),
            product=self.product,
            info={"source": self.name, "frame_index": index, "part_index": part_index, "defect": defect,
                  "fault": fault},
        )

    def render(self, part_index: int, *, phase: int = 0, defect: str | None = None,
               frame_index: int | None = None) -> np.ndarray:
        """Render one part (BGR uint8), optionally with a painted defect."""
        w, h = self.width, self.height
        frame_index = part_index if frame_index is None else frame_index
        rng = np.random.default_rng([self.seed, part_index, 2])
        noise_rng = np.random.default_rng([self.seed, frame_index, 3])

        # conveyor belt: dark rubber with transverse ribs that move with the belt
        belt = np.full((h, w), 58.0, np.float32)
        offset = (frame_index * 7) % 24
        for x in range(-24 + offset, w, 24):
            cv2.line(belt, (x, 0), (x, h - 1), 48.0, 3)
        belt += 3.0 * noise_rng.standard_normal((h, w), dtype=np.float32)
        img = cv2.merge([belt, belt * 1.02, belt * 0.98])

        # part geometry with line-to-line jitter
        scale = min(w, h) / 256.0
        radius = 78.0 * scale * (1.0 + rng.uniform(-0.02, 0.02))
        cx = w / 2 + rng.uniform(-6, 6) * scale
        cy = h / 2 + rng.uniform(-6, 6) * scale
        if self.frames_per_part > 1:  # the part crosses the view left to right
            span = w + 2 * radius
            cx = -radius + span * (phase + 0.5) / self.frames_per_part
        angle = rng.uniform(0, 2 * math.pi)
        brightness = rng.uniform(0.92, 1.08)

        # brushed-metal disc: radial shading + fine concentric texture
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        rr = np.sqrt(dx * dx + dy * dy)
        light = 170.0 + 45.0 * np.cos(np.arctan2(dy, dx) - 0.8) * (rr / max(radius, 1.0))
        light += 4.0 * np.sin(rr * 1.7)
        light *= brightness
        metal = cv2.merge([light * 0.97, light, light * 1.03])
        mask = (rr <= radius).astype(np.float32)
        # soft shadow on the belt
        shadow = cv2.GaussianBlur((np.sqrt((dx - 4 * scale) ** 2 + (dy - 5 * scale) ** 2) <= radius).astype(np.float32),
                                  (0, 0), 4 * scale)
        img *= (1.0 - 0.45 * shadow)[..., None]
        img = img * (1.0 - mask[..., None]) + metal * mask[..., None]

        # bore and bolt holes show the belt through the part
        bore = 22.0 * scale
        holes = [(cx + 50.0 * scale * math.cos(angle + k * math.pi / 2),
                  cy + 50.0 * scale * math.sin(angle + k * math.pi / 2)) for k in range(4)]
        missing = int(rng.integers(4)) if defect == "missing_hole" else -1
        hole_mask = np.zeros((h, w), np.uint8)
        cv2.circle(hole_mask, _pt(cx, cy), int(round(bore)), 255, -1, cv2.LINE_AA)
        for k, (hx, hy) in enumerate(holes):
            if k != missing:
                cv2.circle(hole_mask, _pt(hx, hy), int(round(8 * scale)), 255, -1, cv2.LINE_AA)
        hm = (hole_mask.astype(np.float32) / 255.0)[..., None]
        img = img * (1.0 - hm) + 30.0 * hm
        # chamfer ring around the bore
        cv2.circle(img, _pt(cx, cy), int(round(bore + 3 * scale)), (205, 208, 212), max(1, int(2 * scale)), cv2.LINE_AA)

        if defect in ("scratch", "spot", "crack"):
            self._paint_defect(img, defect, rng, cx, cy, radius, scale)

        img += 2.0 * noise_rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    @staticmethod
    def _paint_defect(img: np.ndarray, kind: str, rng: np.random.Generator, cx: float, cy: float,
                      radius: float, scale: float) -> None:
        # a point on the flange face (between the bore and the rim)
        r = rng.uniform(32, radius / scale - 14) * scale
        a = rng.uniform(0, 2 * math.pi)
        px, py = cx + r * math.cos(a), cy + r * math.sin(a)
        if kind == "scratch":
            length = rng.uniform(25, 45) * scale
            b = rng.uniform(0, math.pi)
            p0 = _pt(px - length / 2 * math.cos(b), py - length / 2 * math.sin(b))
            p1 = _pt(px + length / 2 * math.cos(b), py + length / 2 * math.sin(b))
            cv2.line(img, p0, p1, (250, 250, 252), max(1, int(round(2 * scale))), cv2.LINE_AA)
            cv2.line(img, (p0[0] + 1, p0[1] + 2), (p1[0] + 1, p1[1] + 2), (95, 95, 100), 1, cv2.LINE_AA)
        elif kind == "spot":
            axes = (max(2, int(rng.uniform(5, 10) * scale)), max(2, int(rng.uniform(3, 7) * scale)))
            cv2.ellipse(img, _pt(px, py), axes, float(rng.uniform(0, 180)), 0, 360, (40, 55, 70), -1, cv2.LINE_AA)
        elif kind == "crack":
            pts = [(px, py)]
            b = rng.uniform(0, 2 * math.pi)
            for _ in range(6):
                b += rng.uniform(-0.6, 0.6)
                step = rng.uniform(4, 7) * scale
                pts.append((pts[-1][0] + step * math.cos(b), pts[-1][1] + step * math.sin(b)))
            poly = np.array([_pt(x, y) for x, y in pts], np.int32)
            cv2.polylines(img, [poly], False, (25, 25, 28), max(1, int(round(1.5 * scale))), cv2.LINE_AA)


def apply_fault(image: np.ndarray, fault: str) -> np.ndarray:
    """One frame as a faulty camera would see it (BGR uint8 in and out)."""
    h, w = image.shape[:2]
    scale = min(w, h) / 256.0
    img = image.astype(np.float32)
    if fault == "dirty-lens":  # grime: blurred detail, and a veil of scattered light over everything
        img = cv2.GaussianBlur(img, (0, 0), max(0.8, 3.0 * scale))
        img = 0.65 * img + 0.35 * 200.0
    elif fault == "dim":  # a lamp failing: 45 % less light
        img *= 0.55
    elif fault == "shift":  # the camera knocked: the part 15 % off centre, the belt fills in
        m = np.float32([[1, 0, 0.15 * w], [0, 1, 0.1 * h]])
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    else:
        raise ValueError(f"unknown simulator fault {fault!r}; one of {', '.join(FAULTS)}")
    return np.clip(img, 0, 255).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def write_normal_parts(folder: str | Path, n: int, *, seed: int = 0, width: int = 256, height: int = 256,
                       fmt: str = "png") -> list[Path]:
    """Write ``n`` defect-free part images (``part_000000.png``...) to ``folder``; returns the paths."""
    sim = LineSimulator(seed=seed, width=width, height=height, defect_rate=0.0)
    return _write(folder, sim, range(n), fmt, lambda i: None)


def write_parts(folder: str | Path, n: int, *, seed: int = 0, width: int = 256, height: int = 256,
                defect_rate: float = 0.1, fmt: str = "png") -> list[tuple[Path, str | None]]:
    """Write ``n`` parts of a line with defects into ``folder/good`` and ``folder/<defect kind>``.

    Returns ``(path, defect kind or None)`` per part, in line order.
    """
    sim = LineSimulator(seed=seed, width=width, height=height, defect_rate=defect_rate)
    out = []
    for i in range(n):
        defect = sim.defect_of(i)
        sub = Path(folder) / (defect or "good")
        out.append((_write(sub, sim, [i], fmt, lambda _i, d=defect: d)[0], defect))
    return out


def _write(folder, sim: LineSimulator, indices, fmt: str, defect_for) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}[fmt]
    paths = []
    for i in indices:
        image = sim.render(i, defect=defect_for(i))
        path = folder / f"part_{i:06d}{ext}"
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths
