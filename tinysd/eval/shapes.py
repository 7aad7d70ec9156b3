"""Procedurally drawn shapes: caption grammar, seeded sampler, drawer and detector.

The default model (`weights/tinysd-shapes/`) is trained on these images, and its
prompt adherence is measured with the detector below. Everything here is
deterministic and needs only numpy and pillow.

Grammar (every bracketed part may be absent; an absent part is drawn at random)::

    a [small|large] COLOR SHAPE [on the left|on the right|at the top|at the bottom|in the center] [on a BACKGROUND background]

SHAPE is circle, square or triangle; COLOR one of `COLORS`; BACKGROUND is white,
black, gray, or any COLOR other than the shape's.

Geometry of a drawn image (`SIZE` x `SIZE` pixels, default 64):

- The object's silhouette centroid is placed at (cx, cy). "in the center":
  both within +-`CENTER_JITTER` px of the image centre. "on the left"/"on the
  right": cx is `OFFSET_RANGE` px left/right of the centre and cy within
  +-`SIDE_JITTER` px of it (likewise "at the top"/"at the bottom" with x and y
  swapped). Offsets are clamped so that the shape stays inside the image.
- Size: the half-extent r of the bounding box is in `SMALL_R` px for "small"
  and `LARGE_R` px for "large".
- Shapes are axis-aligned: a circle of radius r, a square of side 2r, an
  upright isosceles triangle of base 2r and height 2r.

Detector regions (`position_of`): with (dx, dy) the centroid's offset from the
image centre as a fraction of the image size, "in the center" when
max(|dx|, |dy|) < `CENTER_FRACTION`; otherwise the dominant axis decides:
"on the left"/"on the right" when |dx| >= |dy| (by the sign of dx), else
"at the top"/"at the bottom" (by the sign of dy; y grows downwards).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# name -> sRGB; background-only colours last.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
BACKGROUNDS = COLORS + ("gray",)
ATTRIBUTES = ("size", "color", "shape", "position", "background")

SMALL_R = (6, 8)  # px, inclusive range of half-extent for "small"
LARGE_R = (11, 14)  # px, for "large"
SIZE_THRESHOLD = 19.5  # px: detected extent < threshold -> small (small <= 17, large >= 22 when drawn)
OFFSET_RANGE = (11, 17)  # px from the centre along the named axis
SIDE_JITTER = 4  # px across the named axis
CENTER_JITTER = 2  # px for "in the center"
CENTER_FRACTION = 0.1  # detector: centre region half-width, fraction of the image size
MIN_OBJECT_PIXELS = 12  # detector: fewer object pixels than this -> no object found
TAPER_THRESHOLD = 0.7  # detector: top/bottom row-width ratio below this -> triangle (ideal 1/3 vs 1)
CORNER_FRACTION = 0.25  # detector: side of the box-corner squares, fraction of the box's shorter side
CORNER_THRESHOLD = 0.66  # detector: corner occupancy at or above this -> square (ideal 1.0), else circle (0.315); see shape_of


def backgrounds_for(color: str) -> tuple[str, ...]:
    """The backgrounds the grammar allows behind an object of `color`."""
    return tuple(b for b in BACKGROUNDS if b != color)


@dataclass(frozen=True)
class Scene:
    """One object on a plain background: every attribute plus its geometry (pixels)."""

    size: str
    color: str
    shape: str
    position: str
    background: str
    cx: float
    cy: float
    r: int

    def attributes(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}


def caption(attrs: dict[str, str]) -> str:
    """The caption of the grammar for the attributes given (color and shape required)."""
    words = ["a"]
    if attrs.get("size"):
        words.append(attrs["size"])
    words += [attrs["color"], attrs["shape"]]
    if attrs.get("position"):
        words.append(attrs["position"])
    if attrs.get("background"):
        words += ["on a", attrs["background"], "background"]
    return " ".join(words)


def _extent(shape: str, r: int) -> tuple[float, float, float, float]:
    """Bounding box of a shape relative to its centroid: (left, top, right, bottom) offsets in px."""
    if shape == "triangle":  # base 2r, height 2r; centroid is 2/3 of the height below the apex
        return (-r, -4 * r / 3, r, 2 * r / 3)
    return (-r, -r, r, r)


def place(rng: np.random.Generator, shape: str, r: int, position: str, size: int = SIZE) -> tuple[float, float]:
    """Centroid (cx, cy) in px for `position`, clamped so the shape lies inside [1, size-1]."""
    c = size / 2
    x0, y0, x1, y1 = _extent(shape, r)
    if position == "in the center":
        cx = c + rng.uniform(-CENTER_JITTER, CENTER_JITTER)
        cy = c + rng.uniform(-CENTER_JITTER, CENTER_JITTER)
    else:
        off = rng.uniform(*OFFSET_RANGE)
        jit = rng.uniform(-SIDE_JITTER, SIDE_JITTER)
        sign = -1 if position in ("on the left", "at the top") else 1
        if position in ("on the left", "on the right"):
            cx, cy = c + sign * off, c + jit
        else:
            cx, cy = c + jit, c + sign * off
    cx = float(np.clip(cx, 1 - x0, size - 1 - x1))
    cy = float(np.clip(cy, 1 - y0, size - 1 - y1))
    return cx, cy


def sample_scene(rng: np.random.Generator, given: dict[str, str] | None = None, size: int = SIZE) -> Scene:
    """A scene with the attributes in `given` and every other attribute drawn uniformly at random."""
    given = dict(given or {})
    sz = given.get("size") or SIZES[rng.integers(len(SIZES))]
    color = given.get("color") or COLORS[rng.integers(len(COLORS))]
    shape = given.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    position = given.get("position") or POSITIONS[rng.integers(len(POSITIONS))]
    bgs = backgrounds_for(color)
    background = given.get("background") or bgs[rng.integers(len(bgs))]
    if background == color:
        raise ValueError(f"background {background!r} equals the object colour")
    lo, hi = SMALL_R if sz == "small" else LARGE_R
    r = int(rng.integers(lo, hi + 1))
    cx, cy = place(rng, shape, r, position, size)
    return Scene(sz, color, shape, position, background, cx, cy, r)


def sample_prompt(rng: np.random.Generator, p_optional: float = 0.5) -> tuple[str, dict[str, str]]:
    """(caption, specified attributes): color and shape always; size, position and
    background each present with probability `p_optional`."""
    full = sample_scene(rng).attributes()
    spec = {"color": full["color"], "shape": full["shape"]}
    for a in ("size", "position", "background"):
        if rng.random() < p_optional:
            spec[a] = full[a]
    return caption(spec), spec


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    """Render `scene` as a `size` x `size` RGB image (no anti-aliasing)."""
    img = Image.new("RGB", (size, size), PALETTE[scene.background])
    d = ImageDraw.Draw(img)
    fill = PALETTE[scene.color]
    x0, y0, x1, y1 = _extent(scene.shape, scene.r)
    box = (scene.cx + x0, scene.cy + y0, scene.cx + x1, scene.cy + y1)
    if scene.shape == "circle":
        d.ellipse(box, fill=fill)
    elif scene.shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(scene.cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return img


# ---------------------------------------------------------------------------
# Detector

_NAMES = tuple(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)  # (P, 3)


def classify_pixels(img: np.ndarray) -> np.ndarray:
    """Index into `PALETTE` of the nearest palette colour (Euclidean in RGB) for each pixel.

    img: uint8 (H, W, 3). Returns int64 (H, W)."""
    x = img.astype(np.float64).reshape(-1, 1, 3)  # (HW, 1, 3)
    d = ((x - _RGB[None]) ** 2).sum(-1)  # (HW, P)
    return d.argmin(-1).reshape(img.shape[:2])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of boolean (H, W) `mask` (ties: the first found in row-major order)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        comp, stack = [], [(int(y0), int(x0))]
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def shape_of(mask: np.ndarray) -> str:
    """Shape of a one-object boolean (H, W) silhouette, from its row-width profile and its corners.

    Rows of the bounding box (min..max row with a mask pixel) are measured by their
    pixel count w(y). With `taper` = mean w over the rows in 10..40% of the box height
    divided by the mean over 60..90% (an upright triangle: about 1/3; circle and
    square: about 1): "triangle" if taper < `TAPER_THRESHOLD`. Otherwise, with
    `corners` = the fraction of mask pixels in the four c x c squares at the box's
    corners (c = max(1, round(`CORNER_FRACTION` * shorter box side))): "square" if
    corners >= `CORNER_THRESHOLD`, else "circle".

    Ideal values: a square fills its corners (1.0); a circle covers 0.315 of each
    corner square of side a quarter of its diameter. The threshold 0.66 is the
    midpoint. (An earlier feature, the fill of the whole box, pi/4 for a circle vs 1
    for a square, read half of the VAE reconstructions of drawn 12..17 px circles as
    squares: blur adds a ring of object pixels that raises the fill but leaves the
    corners empty.)
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    widths = box.sum(1).astype(np.float64)  # (box height,)
    n = len(widths)
    top = widths[int(0.1 * n):max(int(0.4 * n), int(0.1 * n) + 1)].mean()
    bot = widths[int(0.6 * n):max(int(0.9 * n), int(0.6 * n) + 1)].mean()
    if top / max(bot, 1e-9) < TAPER_THRESHOLD:
        return "triangle"
    c = max(1, int(round(CORNER_FRACTION * min(box.shape))))
    corners = (box[:c, :c].sum() + box[:c, -c:].sum() + box[-c:, :c].sum() + box[-c:, -c:].sum()) / (4.0 * c * c)
    return "square" if corners >= CORNER_THRESHOLD else "circle"


def position_of(cx: float, cy: float, size: int) -> str:
    """Region of a centroid (px, y downwards) as defined in the module docstring."""
    dx, dy = cx / size - 0.5, cy / size - 0.5
    if max(abs(dx), abs(dy)) < CENTER_FRACTION:
        return "in the center"
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"


def detect(image) -> dict[str, str | None]:
    """Read the attributes of one-object image `image` (PIL image or uint8 (H, W, 3) array).

    1. Each pixel is labelled with its nearest palette colour.
    2. background: the most common label among the border pixels (outermost ring).
    3. color: the most common label other than the background over the whole image
       (None everywhere else if fewer than `MIN_OBJECT_PIXELS` pixels have it); the
       object mask is the largest 4-connected component of the pixels with that label
       (stray pixels elsewhere are ignored).
    4. position: `position_of` the mask centroid.
    5. size: extent = max(width, height) of the mask's bounding box; "small" if
       < `SIZE_THRESHOLD` * (image size / 64), else "large".
    6. shape: `shape_of` the mask.
    """
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3), got {a.shape}")
    h, w = a.shape[:2]
    lab = classify_pixels(a)
    border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    counts = np.bincount(lab.ravel(), minlength=len(_NAMES))
    counts[bg] = 0
    obj = int(counts.argmax())
    out: dict[str, str | None] = {"background": _NAMES[bg], "color": None, "shape": None, "position": None, "size": None}
    if counts[obj] < MIN_OBJECT_PIXELS:
        return out
    out["color"] = _NAMES[obj]
    mask = largest_component(lab == obj)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    out["position"] = position_of(cx, cy, w)
    extent = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    out["size"] = "small" if extent < SIZE_THRESHOLD * w / 64 else "large"
    out["shape"] = shape_of(mask)
    return out


def score(image, attributes: dict[str, str]) -> dict[str, bool]:
    """For each attribute the caption specified, whether the detector reads the same value."""
    found = detect(image)
    return {k: found.get(k) == v for k, v in attributes.items() if k in ATTRIBUTES}
