"""Face photos of a synthetic identity, painted at the output resolution.

One painter per facial feature (torso, hair behind, ears, head, beard, eyes, brows, nose,
mouth, hair on top), all sharing one :class:`_Person` context, called back to front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from avdata.synth.identity import IdentityAttributes, _mix

_FLAWS = ("cropped", "occluded", "blurred")
_FLAW_RATE = 0.04


class _FacePainter:
    """Paints anti-aliased shapes given in face units onto a float RGB image.

    Face frame: origin at the head centre, u to the right, v downwards; the eye centres
    sit at u = +-0.40 for every identity. `scale` px per unit and `roll` radians map it to pixels, so
    every shape is rasterised at the final resolution (no supersampling needed): edge
    pixels get fractional coverage from their signed distance to the outline.
    """

    def __init__(self, img: np.ndarray, cx: float, cy: float, scale: float, roll: float):
        self.img = img
        self.cx, self.cy, self.s = cx, cy, scale
        self.cos, self.sin = math.cos(roll), math.sin(roll)

    def _region(self, u0, v0, radius):
        px = self.cx + self.s * (self.cos * u0 - self.sin * v0)
        py = self.cy + self.s * (self.sin * u0 + self.cos * v0)
        r = self.s * radius + 2
        h, w = self.img.shape[:2]
        x0, x1 = max(0, int(px - r)), min(w, int(px + r) + 1)
        y0, y1 = max(0, int(py - r)), min(h, int(py + r) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1, dtype=np.float32) - self.cx
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - self.cy
        u = (self.cos * xs + self.sin * ys) / self.s
        v = (-self.sin * xs + self.cos * ys) / self.s
        return (slice(y0, y1), slice(x0, x1)), u, v

    def ellipse(self, u0, v0, ru, rv, angle=0.0, bend=0.0, soft=0.0, extent=None):
        """Coverage mask of a (bent, rotated) ellipse: (region, mask, u, v) or None if off-image.

        `bend` curves the long axis: the centre line is v = bend * a**2 (a along the axis),
        so bend > 0 droops the ends (eyelids, arched brows), bend < 0 lifts them.
        `soft` widens the edge ramp (in face units) for shadows and highlights.
        """
        reach = extent if extent is not None else max(ru, rv) + abs(bend) * ru * ru + soft
        got = self._region(u0, v0, reach)
        if got is None:
            return None
        region, u, v = got
        du, dv = u - u0, v - v0
        ca, sa = math.cos(angle), math.sin(angle)
        a = du * ca + dv * sa
        b = -du * sa + dv * ca - bend * a * a
        d = np.sqrt((a / ru) ** 2 + (b / rv) ** 2)
        feather = max(1.0, soft * self.s)
        mask = np.clip(0.5 - (d - 1.0) * (min(ru, rv) * self.s) / feather, 0.0, 1.0)
        return region, mask, u, v

    def paint(self, shape, color, alpha=1.0):
        if shape is None:
            return
        region, mask = shape[0], shape[1]
        m = (mask * alpha)[..., None]
        patch = self.img[region]
        patch *= 1.0 - m
        patch += m * np.asarray(color, dtype=np.float32)


def _scaled(rgb, k):
    return tuple(min(1.0, c * k) for c in rgb)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A varied backdrop: linear or radial gradient, low-frequency blotches, and sometimes shapes."""
    c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    kind = rng.integers(3)
    if kind == 0:
        ang = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(ang) + ys * math.sin(ang)) * 0.5 + 0.5
    elif kind == 1:
        ox, oy = rng.uniform(-0.8, 0.8, 2)
        t = np.clip(np.sqrt((xs - ox) ** 2 + (ys - oy) ** 2) / 1.6, 0, 1)
    else:
        t = np.full((height, width), 0.5, dtype=np.float32)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    # low-frequency blotches: a coarse random grid upsampled smoothly
    coarse = rng.uniform(-1, 1, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    blot = (
        np.asarray(
            Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((width, height), Image.BICUBIC),
            dtype=np.float32,
        )
        / 127.5
        - 1
    )
    img = img + blot * rng.uniform(0.03, 0.18)
    if rng.random() < 0.6:  # furniture-like shapes, softened
        layer = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(layer)
        for _ in range(rng.integers(2, 7)):
            x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
            w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
            col = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
            else:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0)))
        img = np.asarray(layer, dtype=np.float32) / 255
    # fine texture (wallpaper / sensor grain in out-of-focus backgrounds)
    img = img + rng.normal(0, rng.uniform(0.0, 0.04), (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


@dataclass
class _Person:
    """What every feature painter of one photo/frame shares: the canvas, the identity and
    the per-image conditions, plus the quantities derived from them once."""

    p: _FacePainter
    at: IdentityAttributes
    clothing: tuple[float, float, float]
    light_dir: float  # -1 (lit from the left) .. 1 (from the right)
    light_gain: float
    yaw: float  # head turn, -1 .. 1 (the eyes follow it a little)
    mouth_open: float  # 0 closed .. 1 wide open (videos follow the voice)
    tex: np.random.Generator  # skin/hair texture stream: every painter draws from it in order
    A: float  # head half-width (face units)
    B: float  # head half-height
    hs: float  # vertical feature spacing, follows face length
    fx: float  # yaw shifts the inner features sideways (the nose most) ...
    fy: float  # ... and nod vertically
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]

    @classmethod
    def make(
        cls,
        p: _FacePainter,
        at: IdentityAttributes,
        clothing,
        light_dir: float,
        light_gain: float,
        yaw: float,
        nod: float,
        mouth_open: float,
        texture_seed: int,
    ) -> _Person:
        hair = _scaled(_mix(at.hair_rgb, (0.72, 0.72, 0.70), at.grey), light_gain)
        return cls(
            p=p,
            at=at,
            clothing=clothing,
            light_dir=light_dir,
            light_gain=light_gain,
            yaw=yaw,
            mouth_open=mouth_open,
            tex=np.random.default_rng(texture_seed),
            A=at.face_width,
            B=at.face_height,
            hs=at.face_height / 1.30,
            fx=0.16 * yaw,
            fy=0.10 * nod,
            skin=_scaled(at.skin_rgb, light_gain),
            hair=hair,
        )


def _paint_torso(c: _Person) -> None:
    """Shoulders (clothing), neck, neckline and the shadow under the chin."""
    p, A, B, skin = c.p, c.A, c.B, c.skin
    sh = p.ellipse(0, B + 2.55, 2.5, 2.0)  # shoulders run off the bottom of most photos
    if sh is not None:
        _, _, u, v = sh
        shade = (
            1.0 - 0.3 * (u / 2.5) ** 2 + 0.1 * c.light_dir * u / 2.5 - 0.15 * np.clip((v - B - 1.0) / 2, 0, 1)
        )[..., None]
        p.paint(sh, np.clip(np.asarray(c.clothing, np.float32) * shade, 0, 1))
    neck = p.ellipse(0, B + 0.45, 0.55 * A, 0.7)
    if neck is not None:
        _, _, u, v = neck
        shade = (1.0 - 0.25 * (u / (0.55 * A)) ** 2 + 0.08 * c.light_dir * u)[..., None]
        p.paint(neck, np.clip(np.asarray(_scaled(skin, 0.88), np.float32) * shade, 0, 1))
    p.paint(
        p.ellipse(0, B + 1.08, 0.5 * A, 0.03, bend=-0.6, soft=0.04), _scaled(c.clothing, 0.45), 0.7
    )  # neckline
    p.paint(p.ellipse(0, B * 0.92, 0.5 * A, 0.25, soft=0.2), _scaled(skin, 0.55), 0.55)  # under-chin shadow


def _paint_back_hair(c: _Person) -> None:
    """Hair behind the head: long hair falls to the shoulders."""
    L = c.at.hair_length
    if L > 0.3:
        back = c.p.ellipse(0, -0.1 + 0.55 * L, c.A * 1.25, c.B * 1.03 + 0.55 * L, soft=0.04)
        c.p.paint(back, _scaled(c.hair, 0.8))


def _paint_ears(c: _Person) -> None:
    for side in (-1, 1):
        c.p.paint(c.p.ellipse(side * c.A * 0.97, 0.03, 0.13, 0.24, soft=0.02), _scaled(c.skin, 0.85))
        c.p.paint(c.p.ellipse(side * c.A * 0.99, 0.03, 0.06, 0.14, soft=0.03), _scaled(c.skin, 0.62), 0.6)


def _paint_head(c: _Person) -> None:
    """Shaded skin (darker towards the outline, lit from one side), cheeks, temples, sheen,
    forehead lines."""
    p, A, B, skin, fx, fy, hs = c.p, c.A, c.B, c.skin, c.fx, c.fy, c.hs
    head = p.ellipse(0, 0, A, B)
    if head is not None:
        _, m, u, v = head
        d2 = (u / A) ** 2 + (v / B) ** 2
        shade = 1.02 - 0.30 * d2**2 + 0.10 * c.light_dir * (u / A) - 0.05 * (v / B)
        noise = c.tex.normal(0, 0.015, m.shape).astype(np.float32)
        field = np.asarray(skin, np.float32) * (shade + noise)[..., None]
        p.paint(head, np.clip(field, 0, 1))
    # cheeks, temples, jaw
    for side in (-1, 1):
        p.paint(p.ellipse(side * 0.50 + fx, 0.32 * hs + fy, 0.22, 0.16, soft=0.18), (0.85, 0.40, 0.38), 0.10)
        p.paint(p.ellipse(side * A * 0.82, -0.35, 0.2, 0.5, soft=0.25), _scaled(skin, 0.72), 0.25)
    # specular sheen on forehead, cheekbones and nose bridge: the 3-D cue that keeps dark
    # skin from reading as a flat disc
    sheen = _mix(skin, (1.0, 0.97, 0.94), 0.45)
    p.paint(p.ellipse(fx + 0.1 * c.light_dir, -0.55 + fy, 0.32, 0.16, soft=0.2), sheen, 0.3)
    for side in (-1, 1):
        p.paint(
            p.ellipse(side * 0.46 + fx, 0.12 * hs + fy, 0.16, 0.08, angle=-side * 0.3, soft=0.12),
            sheen,
            0.22 + 0.08 * side * c.light_dir,
        )
    p.paint(p.ellipse(1.6 * fx, 0.1 * hs + fy, 0.03, 0.18 * hs, soft=0.04), sheen, 0.35)
    if c.at.age > 50:  # forehead lines
        for k in range(3):
            p.paint(
                p.ellipse(fx, -0.58 - 0.08 * k + fy, 0.42, 0.008, bend=0.3, soft=0.01),
                _scaled(skin, 0.7),
                0.35 * min(1.0, (c.at.age - 50) / 15),
            )


def _paint_beard(c: _Person) -> None:
    """Beard and moustache (under the lips, which are painted later)."""
    p, at, hs, fy = c.p, c.at, c.hs, c.fy
    if at.beard <= 0.05:
        return
    beard = p.ellipse(0, 0.18 * hs, c.A * 1.01, c.B * 0.86 + 0.05)
    if beard is not None:
        region, m, u, v = beard
        top = 0.50 * hs - 0.30 * (u / c.A) ** 2 + fy  # beard line rises towards the sideburns
        edge = np.clip((v - top) * p.s / max(1.0, 0.06 * p.s), 0, 1)
        grain = 0.8 + 0.4 * c.tex.random(m.shape).astype(np.float32)
        p.paint((region, m * edge * grain.clip(0, 1)), _scaled(c.hair, 0.8), 0.85 * at.beard)
    p.paint(
        p.ellipse(c.fx, 0.53 * hs + fy, 0.27, 0.05, bend=0.8, soft=0.02),
        _scaled(c.hair, 0.75),
        0.9 * at.beard,
    )


def _paint_eyes(c: _Person) -> None:
    """Sockets, lid creases, eyeballs, irises clipped to the opening, highlights, lids."""
    p, skin = c.p, c.skin
    es = c.at.eye_size
    ew, eh = 0.19 * es, 0.085 * es
    gaze = 0.02 * c.yaw + c.tex.uniform(-0.02, 0.02)
    for side in (-1, 1):
        ex, ey = side * 0.40 + c.fx, -0.08 + c.fy
        p.paint(p.ellipse(ex, ey - 0.03, 0.30, 0.18, soft=0.12), _scaled(skin, 0.68), 0.45)  # socket
        p.paint(
            p.ellipse(ex, ey - eh * 1.7, ew * 1.05, 0.014, bend=1.2, soft=0.015), _scaled(skin, 0.55), 0.45
        )  # lid crease
        eye = p.ellipse(ex, ey, ew, eh)
        if eye is None:
            continue
        p.paint(eye, _scaled((0.92, 0.89, 0.86), c.light_gain))
        for radius, color in (
            (0.078 * es, _scaled(c.at.iris_rgb, 0.5)),
            (0.068 * es, c.at.iris_rgb),
            (0.032 * es, (0.02, 0.02, 0.02)),
        ):
            iris = p.ellipse(ex + gaze, ey + 0.005, radius, radius)
            if iris is not None:  # clip the iris to the eye opening
                inside = _clip_to(eye, iris)
                p.paint((iris[0], iris[1] * inside), color)
        p.paint(p.ellipse(ex + gaze - 0.022, ey - 0.022, 0.013, 0.013), (1, 1, 1), 0.85)  # highlight
        p.paint(
            p.ellipse(ex, ey - eh * 0.55, ew * 1.04, 0.022 * es, bend=0.45 * eh / ew**2),
            (0.06, 0.04, 0.04),
            0.95,
        )  # upper lid + lashes
        p.paint(
            p.ellipse(ex, ey + eh * 0.75, ew * 0.95, 0.010, bend=-0.35 * eh / ew**2, soft=0.01),
            _scaled(skin, 0.55),
            0.5,
        )  # lower lid


def _paint_brows(c: _Person) -> None:
    """Arched eyebrows; their thickness follows the pitch factor."""
    for side in (-1, 1):
        brow = c.p.ellipse(
            side * 0.42 + c.fx,
            -0.31 + c.fy,
            0.25,
            c.at.brow_thickness,
            angle=side * 0.08,
            bend=0.9,
            soft=0.012,
        )
        c.p.paint(brow, _scaled(_mix(c.hair, (0.05, 0.04, 0.03), 0.3), 0.85), 0.92)


def _paint_nose(c: _Person) -> None:
    """Side shadows along the bridge, lit tip, alae, nostrils, shadow underneath."""
    p, skin, hs = c.p, c.skin, c.hs
    nx, ny = 1.6 * c.fx, c.fy
    for side in (-1, 1):
        p.paint(
            p.ellipse(side * 0.105 + nx, 0.12 * hs + ny, 0.045, 0.20 * hs, soft=0.05),
            _scaled(skin, 0.72),
            0.35 + 0.15 * side * c.light_dir,
        )
        p.paint(
            p.ellipse(side * 0.11 + nx, 0.355 * hs + ny, 0.075, 0.058, soft=0.03), _scaled(skin, 0.82), 0.6
        )
    p.paint(p.ellipse(nx, 0.30 * hs + ny, 0.085, 0.07, soft=0.05), _scaled(skin, 1.12), 0.5)
    p.paint(p.ellipse(nx, 0.41 * hs + ny, 0.15, 0.035, soft=0.03), _scaled(skin, 0.55), 0.5)
    for side in (-1, 1):
        p.paint(
            p.ellipse(side * 0.055 + nx, 0.392 * hs + ny, 0.036, 0.018, angle=side * 0.35),
            _scaled(skin, 0.25),
            0.9,
        )


def _paint_mouth(c: _Person) -> None:
    """Philtrum, lips, and either the closed lip line or an open mouth with teeth."""
    p, skin, fx, opening = c.p, c.skin, c.fx, c.mouth_open
    my = 0.64 * c.hs + c.fy
    mw = 1.0 + 0.05 * (c.at.eye_size - 1)
    p.paint(p.ellipse(fx, my - 0.11, 0.04, 0.06, soft=0.03), _scaled(skin, 0.8), 0.35)  # philtrum
    lip = _scaled(c.at.lip_rgb, c.light_gain)
    p.paint(p.ellipse(fx, my - 0.032, 0.27 * mw, 0.042, bend=0.35, soft=0.01), _scaled(lip, 0.82))
    p.paint(p.ellipse(fx, my + 0.045 + 0.7 * 0.07 * opening, 0.23 * mw, 0.055, bend=-0.25, soft=0.01), lip)
    p.paint(p.ellipse(fx, my + 0.03 + 0.7 * 0.07 * opening, 0.1, 0.02, soft=0.02), _scaled(lip, 1.25), 0.4)
    if opening > 0.05:
        p.paint(p.ellipse(fx, my + 0.01 + 0.35 * 0.07 * opening, 0.2 * mw, 0.07 * opening), (0.2, 0.06, 0.06))
        p.paint(p.ellipse(fx, my + 0.005, 0.14 * mw, 0.025 * opening), (0.85, 0.83, 0.78), 0.8)
    else:
        p.paint(p.ellipse(fx, my, 0.28 * mw, 0.011, bend=0.25), _scaled(lip, 0.3), 0.9)
    p.paint(p.ellipse(fx, my + 0.14, 0.14, 0.03, soft=0.04), _scaled(skin, 0.75), 0.4)  # under the lip


def _paint_top_hair(c: _Person) -> None:
    """A cap around the head, cut by a curved hairline above the forehead; sideburns on short hair."""
    p, A, at = c.p, c.A, c.at
    L = at.hair_length
    cap = p.ellipse(0, -0.10, A * 1.07 + 0.03 * L, c.B * 1.02 + 0.03 * L)
    if cap is not None:
        region, m, u, v = cap
        hairline = (-0.56 if L > 0.3 else -0.66) - 0.12 * max(0.0, at.age - 45) / 25 * (L <= 0.3)
        part = c.tex.uniform(-0.3, 0.3)
        line = hairline + c.fy + 0.55 * ((u - part) / A) ** 2
        below = np.clip((line - v) * p.s / max(1.0, 0.03 * p.s), 0, 1)
        # strands: stripes that follow the scalp, so the hair is not a flat blob
        strands = 0.9 + 0.07 * np.sin(55 * u + 3 * np.sin(6 * v)) + 0.05 * np.sin(17 * u - 5 * v)
        field = (
            np.asarray(c.hair, np.float32) * strands[..., None] * (1 + 0.08 * c.light_dir * u / A)[..., None]
        )
        p.paint((region, m * below), np.clip(field, 0, 1))
    if L <= 0.3:  # sideburns
        for side in (-1, 1):
            p.paint(p.ellipse(side * A * 0.92, -0.05, 0.07, 0.22, soft=0.03), _scaled(c.hair, 0.9), 0.85)


def _paint_person(
    p: _FacePainter,
    at: IdentityAttributes,
    clothing,
    light_dir: float,
    light_gain: float,
    yaw: float,
    nod: float,
    mouth_open: float = 0.0,
    texture_seed: int = 0,
) -> None:
    """Paint one identity's head and shoulders. Identity features come from `at`; the rest
    (clothing, light, yaw/nod, mouth opening, skin/hair texture seed) is per image.

    Back to front. The order is part of the output: later features cover earlier ones, and
    the head, beard, eyes and hair painters draw from one texture stream in this order.
    """
    person = _Person.make(p, at, clothing, light_dir, light_gain, yaw, nod, mouth_open, texture_seed)
    _paint_torso(person)
    _paint_back_hair(person)
    _paint_ears(person)
    _paint_head(person)
    _paint_beard(person)
    _paint_eyes(person)
    _paint_brows(person)
    _paint_nose(person)
    _paint_mouth(person)
    _paint_top_hair(person)


def _clip_to(outer, inner) -> np.ndarray:
    """inner's mask restricted to outer's coverage (both from _FacePainter.ellipse)."""
    (oy, ox), om = outer[0], outer[1]
    (iy, ix), im = inner[0], inner[1]
    out = np.zeros_like(im)
    y0, y1 = max(oy.start, iy.start), min(oy.stop, iy.stop)
    x0, x1 = max(ox.start, ix.start), min(ox.stop, ix.stop)
    if y0 < y1 and x0 < x1:
        out[y0 - iy.start : y1 - iy.start, x0 - ix.start : x1 - ix.start] = om[
            y0 - oy.start : y1 - oy.start, x0 - ox.start : x1 - ox.start
        ]
    return out


def _finish(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    """Camera softness and sensor noise, then 8-bit."""
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    if blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(pil, dtype=np.float32)
    arr = arr + rng.normal(0, noise * 255, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def render_face(
    at: IdentityAttributes,
    rng: np.random.Generator,
    clothing=None,
    flaw: str | None = "random",
    recording: float | None = None,
) -> Image.Image:
    """One photo of an identity: random size, framing, pose, lighting and background.

    ``recording``: the condition of the video the photo comes from (its colour cast,
    :mod:`avdata.synth.recording`); None: no cast.

    About 1 photo in 25 gets a deliberate flaw, as real scraped face sets do: the face
    half out of the frame ("cropped"), something in front of it ("occluded") or the photo
    badly out of focus ("blurred"). A detector usually misses these, which exercises the
    no-face path downstream. `flaw` forces one (None: a clean photo); "random" draws it.
    """
    if flaw not in (None, "random") + _FLAWS:
        raise ValueError(f"unknown flaw {flaw!r}; expected 'random', None or one of {_FLAWS}")
    width = int(rng.integers(160, 641))
    height = int(np.clip(width * rng.uniform(0.72, 1.4), 160, 640))
    img = _background(rng, width, height)
    A, B = at.face_width, at.face_height
    # face width >= ~84 px; at most ~70% of the short side
    short = min(width, height)
    head_h_px = rng.uniform(0.38, 0.72) * short
    scale = max(42.0 / A, head_h_px / (2 * B))
    cx = rng.uniform(0.32, 0.68) * width
    cy = np.clip(rng.uniform(0.38, 0.58) * height, 1.1 * B * scale, height - 0.75 * B * scale)
    roll = math.radians(rng.uniform(-12, 12))
    draw = rng.random()
    if flaw == "random":
        flaw = None if draw >= _FLAW_RATE else _FLAWS[int(draw / _FLAW_RATE * len(_FLAWS))]
    if flaw == "cropped":  # the face centre just outside the left or right edge
        cx = -0.05 * A * scale if cx < width / 2 else width + 0.05 * A * scale
    if clothing is None:
        clothing = tuple(rng.uniform(0.05, 0.9, 3))
    painter = _FacePainter(img, cx, cy, scale, roll)
    _paint_person(
        painter,
        at,
        clothing,
        light_dir=float(rng.uniform(-1, 1)),
        light_gain=float(rng.uniform(0.88, 1.1)),
        yaw=float(rng.uniform(-1, 1)),
        nod=float(rng.uniform(-1, 1)),
        texture_seed=int(rng.integers(2**31)),
    )
    if flaw == "occluded":  # something (a hand, a microphone, a sign) in front of the face
        occluder = painter.ellipse(
            rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3), 0.75, 0.6, angle=rng.uniform(-1, 1), soft=0.02
        )
        painter.paint(occluder, tuple(rng.uniform(0.05, 0.9, 3)))
    blur = float(rng.uniform(0.3, 0.9)) * max(1.0, scale / 90)
    if flaw == "blurred":
        blur = 0.25 * A * scale
    if recording is not None:
        from avdata.synth.recording import colour_cast

        img = colour_cast(img, recording)
    return _finish(img, rng, blur=blur, noise=float(rng.uniform(0.005, 0.02)))
