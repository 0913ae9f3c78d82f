"""A synthetic face-voice corpus in the real VoxCeleb1 layouts.

`synth_corpus(OUT)` writes a small, fully deterministic stand-in for VoxCeleb1 +
VGGFace so that the whole pipeline (scan, extract, train, evaluate) can run
end to end without any licensed data, and so that a face-voice model has a
correspondence to learn that generalises to identities it has never seen.

Layout (the same as the official downloads)::

    OUT/vox1_meta.csv                       VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set (tab-separated)
    OUT/wav/idNNNNN/YTID/NNNNN.wav          16 kHz mono 16-bit PCM, 4-8 s
    OUT/faces/NAME/YTID/NNNNNNN.jpg         face photos of varied size, framing and background
    OUT/mp4/idNNNNN/YTID/NNNNN.mp4          (videos=True) 2-3 s talking head, MPEG-4 Part 2 + AAC
    OUT/attributes.json                     ground-truth hidden attributes (see below)

Generative model
----------------
Each identity draws hidden attributes from its own random stream
``default_rng([seed, 0, identity_index])``:

* ``gender`` (m/f, from the first name) and ``age`` (20-70 years);
* five standard-normal latent factors, clipped to +-2.2:
  ``pitch``, ``vocal_tract``, ``brightness``, ``breathiness``, ``tempo``.

Every factor shapes the voice AND the face, monotonically, so that a model that
learns "low voice <-> wide, bearded face" on training identities can apply the
same rule to new ones:

============  ============================================  ==========================================
factor        voice                                         face
============  ============================================  ==========================================
gender        F0 ~118 Hz (m) / ~208 Hz (f); formants x1.16  beard only for men, long hair for women,
              for women                                     redder lips
pitch         F0 x exp(0.20 * pitch)                        face width (low voice -> wider face),
                                                            eyebrow thickness, beard density (men),
                                                            hair length (women)
vocal_tract   formants x exp(-0.14 * vocal_tract)           face length (longer tract -> longer face,
              (longer tract -> lower formants)              lower nose and mouth)
brightness    spectral tilt: the source's 2-pole low-pass   skin tone (bright voice -> lighter skin)
              corner (bright voice -> more treble)
breathiness   turbulent noise above 1.5 kHz, aspiration     hair colour (breathy -> lighter hair:
              between harmonics, wider formant bandwidths   black, brown, auburn, blond)
tempo         syllable rate x exp(0.25 * tempo)             eye size (fast talker -> bigger eyes)
age           F0 jitter and 5.5 Hz tremor grow with age,    grey hair, forehead lines, receding
              slight F0 shift                               hairline (men)
============  ============================================  ==========================================

Voice: a Rosenberg glottal pulse train (time-varying F0 with phrase declination,
accents, jitter, tremor) plus pitch-synchronous aspiration -> two-pole spectral
tilt -> per syllable, a cascade of five formant resonators (eight vowels) plus
breath hiss, with fricative/plosive onsets, syllable envelopes and pauses. Each
clip draws its own phrase, a ~3% pitch and ~6% rate offset, loudness and a
background-noise level (25-50 dB SNR, sometimes mains hum), so clips of one
identity differ but stay recognisable.

Face: painted directly at the output resolution with anti-aliased soft masks in
a face coordinate frame (so rotation and scale cost nothing): shoulders and neck,
hair behind the head, a shaded skin ellipse with specular sheen, ears, eye
sockets, eyes (sclera, iris, pupil, lids, highlight), eyebrows, a shaded nose
with nostrils, lips, beard and fringe, then mild blur and sensor noise. Each
photo draws its own size (160-640 px a side), pose (roll/yaw/nod), scale,
position, lighting, background (gradient, blotches, shapes); clothing stays the
same within one YouTube video. The face is always >= ~84 px wide. About 1 photo
in 25 is deliberately flawed (face half out of frame, occluded, or badly out of
focus), as in real scraped sets. facenet-pytorch MTCNN finds a face in ~95-97%
of the photos (measured over seeds 0-2: 97.1%, 95.4%, 95.8%, bench/synth_faces.py):
about as many misses as flawed photos, and they exercise the "no face" path downstream.
Nothing is filtered through a detector.

Videos (``videos=True``) show the same painted person, drifting, zooming and
nodding slightly, with the mouth opening on the voice's vowels; the audio track is
a fresh utterance in the identity's voice. They are encoded with the ffmpeg
binary of imageio-ffmpeg with bit-exact flags, one thread and a fixed quantiser,
so the bytes are reproducible.

``attributes.json`` is ground truth for tests and analysis only: nothing in
training reads it. `identity_attributes(index, seed)` recomputes one entry.

Everything is derived from ``numpy.random.default_rng([seed, kind, identity,
file])`` streams, so every file is byte-identical for the same seed and does
not depend on the order in which files are produced.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFilter
from scipy.signal import butter, lfilter, sosfilt

from avdata.errors import InputError

SAMPLE_RATE = 16000
META_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"

# Sub-stream "kinds" for default_rng([seed, kind, identity, file]).
_K_ATTR, _K_WAV, _K_FACE, _K_VIDEO, _K_LAYOUT, _K_NAMES = 0, 1, 2, 3, 4, 5

# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

# First names by initial, (male, female). Initials ("A.J.") and hyphenated names
# ("Jean-Claude") mimic the punctuation of real VGGFace1 IDs.
_FIRST_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "A": (["Aaron", "Adrian", "A.J.", "Alan", "Anders"], ["Alicja", "Anne-Marie", "Amber", "Ava", "A.J."]),
    "B": (["Bradley", "Bruno", "B.J.", "Barry", "Bjorn"], ["Bea", "Bonnie", "Brenda", "Beth-Ann", "Bingbing"]),
    "C": (["Colin", "C.J.", "Carl", "Cedric", "Chris"], ["Carla", "Chloe", "Cora", "Celine", "C.J."]),
    "D": (["Damian", "Dev", "D.B.", "Dominic", "Dale"], ["Dana", "Delia", "Dina", "Dorothy", "Daisy-Mae"]),
    "E": (["Eoin", "Emil", "E.J.", "Ethan", "Elias"], ["Eva", "Edith", "Elin", "Emma-Lee", "Esme"]),
    "F": (["Felix", "Finn", "Fabio", "Frank"], ["Fiona", "Freya", "Fatima", "Flora"]),
    "G": (["Gilles", "Gareth", "Gus", "Glenn"], ["Gemma", "Greta", "Gwen", "Gina"]),
    "H": (["Hugo", "Harold", "Hamid", "H.G."], ["Hana", "Helen", "Hollie", "Hazel"]),
    "I": (["Ivan", "Idris", "Ian", "Igor"], ["Ines", "Irene", "Isla", "Ingrid"]),
    "J": (["Jean-Claude", "J.K.", "Jonas", "Jack"], ["Jana", "Judith", "Jade", "Jean-Anne"]),
    "K": (["Karl", "Kenji", "Kofi", "Kurt"], ["Kate", "Kira", "Kelly", "Kamala"]),
    "L": (["Liam", "Lars", "Leon", "L.L."], ["Lena", "Lucia", "Leah", "Lise-Lotte"]),
    "M": (["Marco", "Milo", "Mehmet", "Marc-Andre"], ["Mara", "Maya", "Molly", "Mary-Kate"]),
    "N": (["Nils", "Noah", "Nikhil", "Ned"], ["Nora", "Nadia", "Nell", "Noor"]),
    "O": (["Oscar", "Omar", "Otto", "Olaf"], ["Olga", "Olive", "Orla", "Oona"]),
    "P": (["Paul", "Pedro", "P.J.", "Piet"], ["Paula", "Priya", "Pia", "Petra"]),
    "Q": (["Quentin", "Quinn", "Qasim", "Quincy"], ["Queenie", "Quinta", "Qiana", "Quilla"]),
    "R": (["Rafael", "Rupert", "R.J.", "Rohan"], ["Rosa", "Ruth", "Rhea", "Rose-Ellen"]),
    "S": (["Suraj", "Sven", "Simon", "Saul"], ["Sara", "Sofia", "Sinead", "Sun-Hee"]),
    "T": (["Tomas", "T.J.", "Theo", "Tariq"], ["Tara", "Tess", "Talia", "Thea"]),
    "U": (["Ulrich", "Umar", "Uri", "Uwe"], ["Uma", "Ursula", "Una", "Ulla"]),
    "V": (["Victor", "Vikram", "Vince", "Vlad"], ["Vera", "Vivian", "Vanya", "Valerie"]),
    "W": (["Woody", "Walter", "Wes", "Wim"], ["Witney", "Wanda", "Wren", "Willa"]),
    "X": (["Xavier", "Xander", "Xu", "Ximo"], ["Xena", "Ximena", "Xia", "Xanthe"]),
    "Y": (["Yusuf", "Yann", "Yuri", "Yves"], ["Yvonne", "Yara", "Yoko", "Yasmin"]),
    "Z": (["Zac", "Zoltan", "Zeke", "Zain"], ["Zoe", "Zara", "Zelda", "Zina"]),
}
_LAST_PREFIXES = ["Bar", "Cal", "Dun", "Fer", "Hal", "Kes", "Mor", "Pen", "Ros", "Sal", "Thorn", "Wal",
                  "Ash", "Blen", "Car", "Del", "Gal", "Har", "Lind", "Mer", "Nor", "Ost", "Quill", "Rad",
                  "Stan", "Tol", "Ven", "Wick", "Brad", "Cor", "Fair", "Gren"]
_LAST_SUFFIXES = ["ton", "ley", "son", "well", "ford", "ridge", "man", "er", "ish", "by", "wood", "ham",
                  "ken", "ard", "ini", "ez", "ova", "berg", "sky", "dale"]
_LAST_PARTICLES = ["Van_", "De_", "Mc", "St._", "Le_", "Da_"]
_NATIONALITIES = ["USA", "UK", "Canada", "Australia", "India", "Ireland"]
_NATIONALITY_WEIGHTS = [0.5, 0.2, 0.1, 0.08, 0.07, 0.05]
_YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

# Matching protocol (avdata.splits.matching_split): first letter A-B val, C-E test, F-Z train.
_SPLIT_LETTERS = {"val": "AB", "test": "ECD", "train": "FGHIJKLMNOPQRSTUVWXYZ"}


def matching_group_sizes(identities: int) -> dict[str, int]:
    """How many names start in A-B (val), C-E (test) and F-Z (train): ~15/20/65%, at least one each."""
    val = max(1, round(0.15 * identities))
    test = max(1, round(0.20 * identities))
    return {"val": val, "test": test, "train": identities - val - test}


def _last_name(rng: np.random.Generator) -> str:
    base = str(rng.choice(_LAST_PREFIXES)) + str(rng.choice(_LAST_SUFFIXES))
    roll = rng.random()
    if roll < 0.12:  # "Van_Damme" / "McAvoy" style particle
        return str(rng.choice(_LAST_PARTICLES)) + base
    if roll < 0.22:  # double-barrelled "Smith-Jones"
        return base + "-" + str(rng.choice(_LAST_PREFIXES)) + str(rng.choice(_LAST_SUFFIXES))
    return base


def synth_names(identities: int, seed: int = 0) -> list[tuple[str, str]]:
    """(name, gender) for every identity, sorted by name; unique, deterministic in `seed`."""
    _check_count("identities", identities, minimum=3, maximum=8999)
    rng = np.random.default_rng([seed, _K_NAMES])
    sizes = matching_group_sizes(identities)
    people: dict[str, str] = {}
    for split in ("val", "test", "train"):
        letters = _SPLIT_LETTERS[split]
        for k in range(sizes[split]):
            # cycle through the letters first so small corpora still use E (the official "test" Set)
            letter = letters[k] if k < len(letters) else str(rng.choice(list(letters)))
            gender = "m" if rng.random() < 0.5 else "f"
            firsts = _FIRST_NAMES[letter][0 if gender == "m" else 1]
            while True:
                name = f"{rng.choice(firsts)}_{_last_name(rng)}"
                if name not in people:
                    break
            people[name] = gender
    return sorted(people.items())


# --------------------------------------------------------------------------------------
# Hidden attributes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityAttributes:
    """Hidden per-identity attributes and the voice/face parameters derived from them."""

    index: int
    vox_id: str
    name: str
    gender: str
    nationality: str
    set: str
    age: float
    # latent factors, standard normal clipped to +-2.2
    pitch: float
    vocal_tract: float
    brightness: float
    breathiness: float
    tempo: float
    # voice parameters
    f0_hz: float
    formant_scale: float
    tilt: float              # pole of the glottal source's 2-pole low-pass (higher = darker voice)
    breath: float            # breath noise level relative to the voiced sound
    syllables_per_s: float
    jitter: float
    # face parameters
    face_width: float        # half-width of the head in face units (eye spacing is fixed)
    face_height: float       # half-height of the head in face units
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_length: float       # 0 = cropped, 1 = shoulder length
    grey: float              # fraction of grey in the hair
    beard: float             # 0 = clean-shaven, 1 = full beard
    eye_size: float
    brow_thickness: float
    lip_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]


def _mix(a, b, t):
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _attributes(index: int, name: str, gender: str, seed: int) -> IdentityAttributes:
    rng = np.random.default_rng([seed, _K_ATTR, index])
    z = np.clip(rng.standard_normal(5), -2.2, 2.2)
    pitch, vocal_tract, brightness, breathiness, tempo = (float(v) for v in z)
    age = float(rng.uniform(20, 70))
    nationality = str(rng.choice(_NATIONALITIES, p=_NATIONALITY_WEIGHTS))
    male = gender == "m"
    old = (age - 20) / 50  # 0..1

    # ---- voice
    f0 = (118.0 if male else 208.0) * math.exp(0.20 * pitch) * (1 + (0.04 if male else -0.06) * old)
    formant_scale = (1.0 if male else 1.16) * math.exp(-0.14 * vocal_tract)
    tilt = 0.55 - 0.15 * brightness          # source low-pass pole: 0.22 (bright) .. 0.88 (dark)
    breath = 0.02 + 0.16 * _sigmoid(1.6 * breathiness)
    syllables_per_s = 4.3 * math.exp(0.25 * tempo)
    jitter = 0.004 + 0.02 * old

    # ---- face (face units: eye centres are +-0.40 apart horizontally, fixed)
    face_width = 1.0 - 0.10 * pitch + (0.04 if male else -0.02)
    face_height = 1.30 + 0.16 * vocal_tract + (0.03 if male else 0.0)
    light = _sigmoid(1.3 * brightness)        # dark brown .. pale
    skin = _mix((0.40, 0.25, 0.17), (0.96, 0.80, 0.70), light)
    hair_light = _sigmoid(1.4 * breathiness)  # black .. blond, via brown and auburn
    if hair_light < 0.5:
        hair = _mix((0.07, 0.05, 0.045), (0.40, 0.24, 0.13), hair_light * 2)
    else:
        hair = _mix((0.40, 0.24, 0.13), (0.86, 0.72, 0.45), hair_light * 2 - 1)
    grey = float(np.clip((age - 45) / 25, 0, 1)) * 0.5
    # women: higher voice -> longer hair; men: short hair (the beard carries pitch)
    hair_length = float(np.clip(0.75 + 0.13 * pitch + rng.uniform(-0.05, 0.05), 0.4, 1.0) if not male
                        else rng.uniform(0.0, 0.2))
    beard = float(np.clip(0.55 - 0.55 * pitch, 0, 1)) if male else 0.0
    eye_size = 1.0 + 0.18 * tempo
    brow_thickness = (0.042 if male else 0.032) * math.exp(-0.18 * pitch)
    lip = (0.72, 0.30, 0.32) if not male else (0.62, 0.38, 0.36)
    lip = _mix(lip, tuple(c * 0.75 for c in skin), 0.35)
    iris = _mix((0.20, 0.12, 0.06), (0.30, 0.45, 0.60), float(rng.random()) * light)

    return IdentityAttributes(
        index=index, vox_id=f"id{10001 + index}", name=name, gender=gender, nationality=nationality,
        set="test" if name[0].upper() == "E" else "dev", age=round(age, 3),
        pitch=pitch, vocal_tract=vocal_tract, brightness=brightness, breathiness=breathiness, tempo=tempo,
        f0_hz=f0, formant_scale=formant_scale, tilt=float(np.clip(tilt, 0.2, 0.9)), breath=breath,
        syllables_per_s=syllables_per_s, jitter=jitter,
        face_width=face_width, face_height=face_height, skin_rgb=skin, hair_rgb=hair,
        hair_length=hair_length, grey=grey, beard=beard, eye_size=eye_size,
        brow_thickness=brow_thickness, lip_rgb=lip, iris_rgb=iris)


def corpus_attributes(identities: int = 60, seed: int = 0) -> list[IdentityAttributes]:
    """Hidden attributes of every identity of `synth_corpus(identities=..., seed=...)`, in id order."""
    return [_attributes(i, name, gender, seed) for i, (name, gender) in enumerate(synth_names(identities, seed))]


def identity_attributes(name_or_index: str | int, seed: int = 0, identities: int = 60) -> IdentityAttributes:
    """Hidden attributes of one identity (by VGGFace1 name, VoxCeleb1 id or 0-based index)."""
    people = synth_names(identities, seed)
    if isinstance(name_or_index, (int, np.integer)):
        index = int(name_or_index)
        if not 0 <= index < len(people):
            raise ValueError(f"identity index {index} out of range 0..{len(people) - 1}")
    else:
        key = str(name_or_index)
        lookup = {name: i for i, (name, _) in enumerate(people)}
        lookup.update({f"id{10001 + i}": i for i in range(len(people))})
        if key not in lookup:
            raise ValueError(f"no identity {key!r} in a {identities}-identity corpus with seed {seed}")
        index = lookup[key]
    name, gender = people[index]
    return _attributes(index, name, gender, seed)


def _check_count(what: str, value, minimum: int = 1, maximum: int = 100000) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{what} must be between {minimum} and {maximum}, got {value}")


# --------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------


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
    blot = np.asarray(Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
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


def _paint_person(p: _FacePainter, at: IdentityAttributes, clothing, light_dir: float, light_gain: float,
                  yaw: float, nod: float, mouth_open: float = 0.0, texture_seed: int = 0) -> None:
    """Paint one identity's head and shoulders. Identity features come from `at`; the rest
    (clothing, light, yaw/nod, mouth opening, skin/hair texture seed) is per image."""
    A, B = at.face_width, at.face_height
    hs = B / 1.30                       # vertical feature spacing follows face length
    skin = _scaled(at.skin_rgb, light_gain)
    hair = _mix(at.hair_rgb, (0.72, 0.72, 0.70), at.grey)
    hair = _scaled(hair, light_gain)
    tex = np.random.default_rng(texture_seed)
    # yaw shifts the inner features sideways (nose most), nod shifts them vertically
    fx, fy = 0.16 * yaw, 0.10 * nod

    # torso and neck
    sh = p.ellipse(0, B + 2.55, 2.5, 2.0)   # shoulders run off the bottom of most photos
    if sh is not None:
        _, m, u, v = sh
        shade = (1.0 - 0.3 * (u / 2.5) ** 2 + 0.1 * light_dir * u / 2.5
                 - 0.15 * np.clip((v - B - 1.0) / 2, 0, 1))[..., None]
        p.paint(sh, np.clip(np.asarray(clothing, np.float32) * shade, 0, 1))
    neck = p.ellipse(0, B + 0.45, 0.55 * A, 0.7)
    if neck is not None:
        _, m, u, v = neck
        shade = (1.0 - 0.25 * (u / (0.55 * A)) ** 2 + 0.08 * light_dir * u)[..., None]
        p.paint(neck, np.clip(np.asarray(_scaled(skin, 0.88), np.float32) * shade, 0, 1))
    p.paint(p.ellipse(0, B + 1.08, 0.5 * A, 0.03, bend=-0.6, soft=0.04), _scaled(clothing, 0.45), 0.7)  # neckline
    p.paint(p.ellipse(0, B * 0.92, 0.5 * A, 0.25, soft=0.2), _scaled(skin, 0.55), 0.55)  # under-chin shadow

    # hair behind the head (long hair falls to the shoulders)
    L = at.hair_length
    if L > 0.3:
        back = p.ellipse(0, -0.1 + 0.55 * L, A * 1.25, B * 1.03 + 0.55 * L, soft=0.04)
        p.paint(back, _scaled(hair, 0.8))

    # ears
    for side in (-1, 1):
        p.paint(p.ellipse(side * A * 0.97, 0.03, 0.13, 0.24, soft=0.02), _scaled(skin, 0.85))
        p.paint(p.ellipse(side * A * 0.99, 0.03, 0.06, 0.14, soft=0.03), _scaled(skin, 0.62), 0.6)

    # head: shaded skin (darker towards the outline, lit from one side)
    head = p.ellipse(0, 0, A, B)
    if head is not None:
        _, m, u, v = head
        d2 = (u / A) ** 2 + (v / B) ** 2
        shade = 1.02 - 0.30 * d2 ** 2 + 0.10 * light_dir * (u / A) - 0.05 * (v / B)
        noise = tex.normal(0, 0.015, m.shape).astype(np.float32)
        field = np.asarray(skin, np.float32) * (shade + noise)[..., None]
        p.paint(head, np.clip(field, 0, 1))
    # cheeks, temples, jaw
    for side in (-1, 1):
        p.paint(p.ellipse(side * 0.50 + fx, 0.32 * hs + fy, 0.22, 0.16, soft=0.18), (0.85, 0.40, 0.38), 0.10)
        p.paint(p.ellipse(side * A * 0.82, -0.35, 0.2, 0.5, soft=0.25), _scaled(skin, 0.72), 0.25)
    # specular sheen on forehead, cheekbones and nose bridge: the 3-D cue that keeps dark
    # skin from reading as a flat disc
    sheen = _mix(skin, (1.0, 0.97, 0.94), 0.45)
    p.paint(p.ellipse(fx + 0.1 * light_dir, -0.55 + fy, 0.32, 0.16, soft=0.2), sheen, 0.3)
    for side in (-1, 1):
        p.paint(p.ellipse(side * 0.46 + fx, 0.12 * hs + fy, 0.16, 0.08, angle=-side * 0.3, soft=0.12),
                sheen, 0.22 + 0.08 * side * light_dir)
    p.paint(p.ellipse(1.6 * fx, 0.1 * hs + fy, 0.03, 0.18 * hs, soft=0.04), sheen, 0.35)
    if at.age > 50:  # forehead lines
        for k in range(3):
            p.paint(p.ellipse(fx, -0.58 - 0.08 * k + fy, 0.42, 0.008, bend=0.3, soft=0.01),
                    _scaled(skin, 0.7), 0.35 * min(1.0, (at.age - 50) / 15))

    # beard and moustache (under the lips, which are painted later)
    if at.beard > 0.05:
        beard = p.ellipse(0, 0.18 * hs, A * 1.01, B * 0.86 + 0.05)
        if beard is not None:
            region, m, u, v = beard
            top = 0.50 * hs - 0.30 * (u / A) ** 2 + fy    # beard line rises towards the sideburns
            edge = np.clip((v - top) * p.s / max(1.0, 0.06 * p.s), 0, 1)
            grain = 0.8 + 0.4 * tex.random(m.shape).astype(np.float32)
            p.paint((region, m * edge * grain.clip(0, 1)), _scaled(hair, 0.8), 0.85 * at.beard)
        p.paint(p.ellipse(fx, 0.53 * hs + fy, 0.27, 0.05, bend=0.8, soft=0.02), _scaled(hair, 0.75),
                0.9 * at.beard)

    # eyes
    es = at.eye_size
    ew, eh = 0.19 * es, 0.085 * es
    gaze = 0.02 * yaw + tex.uniform(-0.02, 0.02)
    for side in (-1, 1):
        ex, ey = side * 0.40 + fx, -0.08 + fy
        p.paint(p.ellipse(ex, ey - 0.03, 0.30, 0.18, soft=0.12), _scaled(skin, 0.68), 0.45)   # socket
        p.paint(p.ellipse(ex, ey - eh * 1.7, ew * 1.05, 0.014, bend=1.2, soft=0.015),
                _scaled(skin, 0.55), 0.45)                                               # lid crease
        eye = p.ellipse(ex, ey, ew, eh)
        if eye is None:
            continue
        p.paint(eye, _scaled((0.92, 0.89, 0.86), light_gain))
        for radius, color in ((0.078 * es, _scaled(at.iris_rgb, 0.5)), (0.068 * es, at.iris_rgb),
                              (0.032 * es, (0.02, 0.02, 0.02))):
            iris = p.ellipse(ex + gaze, ey + 0.005, radius, radius)
            if iris is not None:  # clip the iris to the eye opening
                inside = _clip_to(eye, iris)
                p.paint((iris[0], iris[1] * inside), color)
        p.paint(p.ellipse(ex + gaze - 0.022, ey - 0.022, 0.013, 0.013), (1, 1, 1), 0.85)    # highlight
        p.paint(p.ellipse(ex, ey - eh * 0.55, ew * 1.04, 0.022 * es, bend=0.45 * eh / ew ** 2),
                (0.06, 0.04, 0.04), 0.95)                                                # upper lid + lashes
        p.paint(p.ellipse(ex, ey + eh * 0.75, ew * 0.95, 0.010, bend=-0.35 * eh / ew ** 2, soft=0.01),
                _scaled(skin, 0.55), 0.5)                                                # lower lid

    # eyebrows: arched, thickness follows the pitch factor
    for side in (-1, 1):
        brow = p.ellipse(side * 0.42 + fx, -0.31 + fy, 0.25, at.brow_thickness, angle=side * 0.08,
                         bend=0.9, soft=0.012)
        p.paint(brow, _scaled(_mix(hair, (0.05, 0.04, 0.03), 0.3), 0.85), 0.92)

    # nose: side shadows along the bridge, lit tip, alae, nostrils, shadow underneath
    nx, ny = 1.6 * fx, fy
    for side in (-1, 1):
        p.paint(p.ellipse(side * 0.105 + nx, 0.12 * hs + ny, 0.045, 0.20 * hs, soft=0.05),
                _scaled(skin, 0.72), 0.35 + 0.15 * side * light_dir)
        p.paint(p.ellipse(side * 0.11 + nx, 0.355 * hs + ny, 0.075, 0.058, soft=0.03), _scaled(skin, 0.82), 0.6)
    p.paint(p.ellipse(nx, 0.30 * hs + ny, 0.085, 0.07, soft=0.05), _scaled(skin, 1.12), 0.5)
    p.paint(p.ellipse(nx, 0.41 * hs + ny, 0.15, 0.035, soft=0.03), _scaled(skin, 0.55), 0.5)
    for side in (-1, 1):
        p.paint(p.ellipse(side * 0.055 + nx, 0.392 * hs + ny, 0.036, 0.018, angle=side * 0.35),
                _scaled(skin, 0.25), 0.9)

    # mouth
    my = 0.64 * hs + fy
    mw = 1.0 + 0.05 * (at.eye_size - 1)
    p.paint(p.ellipse(fx, my - 0.11, 0.04, 0.06, soft=0.03), _scaled(skin, 0.8), 0.35)          # philtrum
    lip = _scaled(at.lip_rgb, light_gain)
    p.paint(p.ellipse(fx, my - 0.032, 0.27 * mw, 0.042, bend=0.35, soft=0.01), _scaled(lip, 0.82))
    p.paint(p.ellipse(fx, my + 0.045 + 0.7 * 0.07 * mouth_open, 0.23 * mw, 0.055, bend=-0.25, soft=0.01), lip)
    p.paint(p.ellipse(fx, my + 0.03 + 0.7 * 0.07 * mouth_open, 0.1, 0.02, soft=0.02), _scaled(lip, 1.25), 0.4)
    if mouth_open > 0.05:
        p.paint(p.ellipse(fx, my + 0.01 + 0.35 * 0.07 * mouth_open, 0.2 * mw, 0.07 * mouth_open), (0.2, 0.06, 0.06))
        p.paint(p.ellipse(fx, my + 0.005, 0.14 * mw, 0.025 * mouth_open), (0.85, 0.83, 0.78), 0.8)
    else:
        p.paint(p.ellipse(fx, my, 0.28 * mw, 0.011, bend=0.25), _scaled(lip, 0.3), 0.9)
    p.paint(p.ellipse(fx, my + 0.14, 0.14, 0.03, soft=0.04), _scaled(skin, 0.75), 0.4)          # under the lip

    # hair on top: a cap around the head, cut by a curved hairline above the forehead
    cap = p.ellipse(0, -0.10, A * 1.07 + 0.03 * L, B * 1.02 + 0.03 * L)
    if cap is not None:
        region, m, u, v = cap
        hairline = (-0.56 if L > 0.3 else -0.66) - 0.12 * max(0.0, at.age - 45) / 25 * (L <= 0.3)
        part = tex.uniform(-0.3, 0.3)
        line = hairline + fy + 0.55 * ((u - part) / A) ** 2
        below = np.clip((line - v) * p.s / max(1.0, 0.03 * p.s), 0, 1)
        # strands: stripes that follow the scalp, so the hair is not a flat blob
        strands = 0.9 + 0.07 * np.sin(55 * u + 3 * np.sin(6 * v)) + 0.05 * np.sin(17 * u - 5 * v)
        field = np.asarray(hair, np.float32) * strands[..., None] * (1 + 0.08 * light_dir * u / A)[..., None]
        p.paint((region, m * below), np.clip(field, 0, 1))
    if L <= 0.3:  # sideburns
        for side in (-1, 1):
            p.paint(p.ellipse(side * A * 0.92, -0.05, 0.07, 0.22, soft=0.03), _scaled(hair, 0.9), 0.85)


def _clip_to(outer, inner) -> np.ndarray:
    """inner's mask restricted to outer's coverage (both from _FacePainter.ellipse)."""
    (oy, ox), om = outer[0], outer[1]
    (iy, ix), im = inner[0], inner[1]
    out = np.zeros_like(im)
    y0, y1 = max(oy.start, iy.start), min(oy.stop, iy.stop)
    x0, x1 = max(ox.start, ix.start), min(ox.stop, ix.stop)
    if y0 < y1 and x0 < x1:
        out[y0 - iy.start:y1 - iy.start, x0 - ix.start:x1 - ix.start] = \
            om[y0 - oy.start:y1 - oy.start, x0 - ox.start:x1 - ox.start]
    return out


def _finish(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    """Camera softness and sensor noise, then 8-bit."""
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    if blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(pil, dtype=np.float32)
    arr = arr + rng.normal(0, noise * 255, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def render_face(at: IdentityAttributes, rng: np.random.Generator, clothing=None,
                flaw: str | None = "random") -> Image.Image:
    """One photo of an identity: random size, framing, pose, lighting and background.

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
    if flaw == "cropped":   # the face centre just outside the left or right edge
        cx = -0.05 * A * scale if cx < width / 2 else width + 0.05 * A * scale
    if clothing is None:
        clothing = tuple(rng.uniform(0.05, 0.9, 3))
    painter = _FacePainter(img, cx, cy, scale, roll)
    _paint_person(painter, at, clothing, light_dir=float(rng.uniform(-1, 1)),
                  light_gain=float(rng.uniform(0.88, 1.1)), yaw=float(rng.uniform(-1, 1)),
                  nod=float(rng.uniform(-1, 1)), texture_seed=int(rng.integers(2 ** 31)))
    if flaw == "occluded":   # something (a hand, a microphone, a sign) in front of the face
        occluder = painter.ellipse(rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3), 0.75, 0.6,
                                   angle=rng.uniform(-1, 1), soft=0.02)
        painter.paint(occluder, tuple(rng.uniform(0.05, 0.9, 3)))
    blur = float(rng.uniform(0.3, 0.9)) * max(1.0, scale / 90)
    if flaw == "blurred":
        blur = 0.25 * A * scale
    return _finish(img, rng, blur=blur, noise=float(rng.uniform(0.005, 0.02)))


# --------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------

# Adult male formants F1-F3 (Hz; Peterson & Barney style) for a few vowels; F4/F5 fixed.
_VOWELS = np.array([
    [730, 1090, 2440],   # a
    [530, 1840, 2480],   # e
    [270, 2290, 3010],   # i
    [570, 840, 2410],    # o
    [300, 870, 2240],    # u
    [660, 1720, 2410],   # ae
    [640, 1190, 2390],   # uh
    [390, 1990, 2550],   # ih
], dtype=float)
_BANDWIDTHS = np.array([70, 100, 150, 220, 300], dtype=float)


def _resonator_sos(freqs, bandwidths, sr=SAMPLE_RATE) -> np.ndarray:
    """Cascade of 2nd-order formant resonators (Klatt), each with unit gain at DC."""
    sos = []
    for f, bw in zip(freqs, bandwidths):
        f = min(f, 0.45 * sr)
        r = math.exp(-math.pi * bw / sr)
        c = 2 * r * math.cos(2 * math.pi * f / sr)
        gain = 1 - c + r * r
        sos.append([gain, 0, 0, 1, -c, r * r])
    return np.array(sos)


@functools.lru_cache(maxsize=None)
def _bandpass_sos(lo: float, hi: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-pass for fricative and burst noise (cached: only a handful of bands are used)."""
    return butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos")


def _raised_cosine_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, attack))
    if release:
        env[n - release:] = 0.5 + 0.5 * np.cos(np.linspace(0, math.pi, release))
    return env


def synth_voice(at: IdentityAttributes, rng: np.random.Generator, duration: float,
                sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """One utterance of babble in the identity's voice.

    Returns (audio float32 in [-1, 1], per-sample mouth opening in [0, 1]).
    """
    n = int(round(duration * sr))
    f0_base = at.f0_hz * math.exp(rng.normal(0, 0.03))            # per-clip pitch offset
    rate = at.syllables_per_s * math.exp(rng.normal(0, 0.06))      # per-clip rate offset
    fscale = at.formant_scale * math.exp(rng.normal(0, 0.015))

    # --- prosody: phrases of syllables separated by pauses
    syllables = []  # (start, vowel_start, end, vowel, accent, onset); times in seconds
    t = rng.uniform(0.12, 0.4)
    phrase_bounds = []
    while t < duration - 0.35:
        p_start = t
        for _ in range(int(rng.integers(3, 10))):
            dur = rng.uniform(0.7, 1.3) / rate
            if t + dur > duration - 0.1:
                break
            onset = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))  # none, fricative, plosive, long vowel
            cons = {0: 0.0, 1: rng.uniform(0.05, 0.09), 2: rng.uniform(0.03, 0.05), 3: 0.0}[onset]
            if onset == 3:
                dur *= 1.5
            syllables.append((t, t + cons, min(t + dur, duration - 0.05), int(rng.integers(len(_VOWELS))),
                              rng.normal(0, 0.05), onset))
            t += dur
        phrase_bounds.append((p_start, t))
        t += rng.uniform(0.15, 0.55)

    # --- F0 track: declination over each phrase, per-syllable accents, jitter and age tremor
    times = np.arange(n) / sr
    ctrl_t, ctrl_f = [0.0], [f0_base]
    for start, v_start, end, _, accent, _ in syllables:
        ctrl_t.append((v_start + end) / 2)
        p_start, p_end = next(b for b in phrase_bounds if b[0] <= start <= b[1])
        decl = 1.08 - 0.16 * (ctrl_t[-1] - p_start) / max(p_end - p_start, 1e-3)
        ctrl_f.append(f0_base * decl * (1 + accent))
    ctrl_t.append(duration)
    ctrl_f.append(f0_base * 0.92)
    f0 = np.interp(times, ctrl_t, ctrl_f)
    slow = rng.normal(0, 1, int(duration * 100) + 2)
    f0 *= 1 + at.jitter * np.interp(times, np.arange(len(slow)) / 100, slow)
    f0 *= 1 + at.jitter * np.sin(2 * math.pi * 5.5 * times + rng.uniform(0, 2 * math.pi))

    # --- glottal source: Rosenberg pulse, differentiated (lip radiation), breath, spectral tilt
    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    open_q = 0.5
    close_q = 0.16
    pulse = np.where(frac < open_q, 0.5 - 0.5 * np.cos(math.pi * frac / open_q),
                     np.where(frac < open_q + close_q, np.cos(0.5 * math.pi * (frac - open_q) / close_q), 0.0))
    source = np.diff(pulse, prepend=0.0)
    source /= np.std(source) + 1e-9
    aspiration = rng.normal(0, 1, n) * (0.6 + 0.4 * (frac < open_q))   # pitch-synchronous breath
    source = source + at.breath * 2.5 * aspiration
    # Tilt after the breath noise, so that brightness shapes the whole spectrum and breathiness
    # shows as noise between the harmonics rather than as extra treble. Two one-pole low-passes:
    # 12 dB/octave above the corner, a large, easily heard timbre difference between identities.
    source = lfilter([(1 - at.tilt) ** 2], np.convolve([1, -at.tilt], [1, -at.tilt]), source)
    source /= np.std(source) + 1e-9

    # --- vocal tract: per-syllable vowel filters, consonant onsets, envelopes
    out = np.zeros(n)
    mouth = np.zeros(n)
    bandwidths = _BANDWIDTHS * (1 + 3 * at.breath)
    for start, v_start, end, vowel, _, onset in syllables:
        s0, v0, s1 = int(start * sr), int(v_start * sr), int(end * sr)
        if onset == 1:   # fricative: band-limited noise just before the vowel
            lo, hi = [(3800, 7000), (2200, 4600), (1200, 6500)][int(rng.integers(3))]
            noise = rng.normal(0, 1, v0 - s0) * _raised_cosine_envelope(v0 - s0, 80, 80)
            out[s0:v0] += sosfilt(_bandpass_sos(lo, hi), noise) * rng.uniform(0.25, 0.6)
        elif onset == 2:  # plosive: a silent closure, then a short burst
            b0 = v0 - int(0.012 * sr)
            burst = rng.normal(0, 1, v0 - b0) * np.linspace(1, 0.2, v0 - b0)
            out[b0:v0] += sosfilt(_bandpass_sos(1500, 4500), burst) * 0.5
        seg = min(s1 + int(0.03 * sr), n) - v0
        if seg <= 0:
            continue
        formants = np.concatenate([_VOWELS[vowel], [3300, 4200]]) * fscale
        formants[:3] *= np.exp(rng.normal(0, 0.03, 3))   # coarticulation wobble
        env = _raised_cosine_envelope(s1 - v0, int(0.025 * sr), int(0.05 * sr))
        env = np.concatenate([env, np.zeros(seg - len(env))])
        excitation = source[v0:v0 + seg] * env
        voiced = sosfilt(_resonator_sos(formants, bandwidths), excitation)
        # breathy voices leak turbulent noise above ~1.5 kHz, independent of the source tilt
        hiss = sosfilt(_bandpass_sos(1500, 6500), rng.normal(0, 1, seg)) * env
        voiced += hiss * (2.0 * at.breath * np.sqrt(np.mean(voiced ** 2)) / (np.std(hiss) + 1e-9))
        out[v0:v0 + seg] += voiced
        mouth[v0:v0 + seg] = np.maximum(mouth[v0:v0 + seg], env * (0.6 + 0.4 * _VOWELS[vowel][0] / 730))

    # --- room: background noise at a random SNR, sometimes mains hum; random loudness
    speech_rms = np.sqrt(np.mean(out[mouth > 0.5] ** 2)) if np.any(mouth > 0.5) else 1.0
    colour = rng.uniform(0.0, 0.95)
    background = lfilter([1 - colour], [1, -colour], rng.normal(0, 1, n))
    background *= speech_rms * 10 ** (-rng.uniform(25, 50) / 20) / (np.std(background) + 1e-12)
    if rng.random() < 0.2:
        background += speech_rms * 0.01 * np.sin(2 * math.pi * rng.choice([50, 60]) * times)
    audio = out + background
    audio *= rng.uniform(0.3, 0.9) / (np.max(np.abs(audio)) + 1e-9)
    return audio.astype(np.float32), np.clip(mouth, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------


def _write_video(path: Path, at: IdentityAttributes, rng: np.random.Generator, clothing) -> None:
    """A 2-3 s talking head: the face drifts, zooms and nods a little, the mouth follows the voice."""
    import ffmpeg  # ffmpeg-python; imported here so that audio/face-only use does not need it
    import imageio_ffmpeg

    fps = int(rng.choice([15, 20, 25]))
    width = int(rng.choice([128, 160, 192, 224, 256]))
    height = int(np.clip(width + 16 * rng.integers(-3, 4), 128, 256))
    n_frames = int(round(rng.uniform(2.0, 3.0) * fps))
    audio, mouth = synth_voice(at, rng, n_frames / fps)
    background = _background(rng, width, height)
    A, B = at.face_width, at.face_height
    base_scale = max(40.0 / A, rng.uniform(0.5, 0.7) * min(width, height) / (2 * B))
    cx0, cy0 = rng.uniform(0.42, 0.58) * width, rng.uniform(0.42, 0.52) * height
    light_dir, light_gain = float(rng.uniform(-1, 1)), float(rng.uniform(0.9, 1.08))
    yaw0, nod0 = float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.5, 0.5))
    phases = rng.uniform(0, 2 * math.pi, 5)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    hop = SAMPLE_RATE // fps
    for k in range(n_frames):
        t = k / fps
        wobble = [math.sin(2 * math.pi * f * t + ph) for f, ph in zip((0.4, 0.5, 0.3, 0.7, 0.6), phases)]
        img = background.copy()
        painter = _FacePainter(img, cx0 + 0.04 * width * wobble[0], cy0 + 0.03 * height * wobble[1],
                               base_scale * (1 + 0.05 * wobble[2]), math.radians(4 * wobble[3]))
        opening = float(mouth[k * hop:(k + 1) * hop].mean()) if k * hop < len(mouth) else 0.0
        _paint_person(painter, at, clothing, light_dir, light_gain, yaw=yaw0 + 0.2 * wobble[4],
                      nod=nod0 + 0.2 * wobble[1], mouth_open=opening, texture_seed=int(phases[0] * 1e6))
        frames[k] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    frames = frames.astype(np.int16) + rng.integers(-3, 4, frames.shape, dtype=np.int16)  # sensor noise
    frames = np.clip(frames, 0, 255).astype(np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avdata-synth-") as tmp:
        wav = Path(tmp) / "audio.wav"
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
        video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        audio_in = ffmpeg.input(str(wav))
        # bit-exact flags, one thread and fixed quantiser/bitrate make the bytes reproducible
        stream = ffmpeg.output(
            video_in, audio_in, str(path), vcodec="mpeg4", pix_fmt="yuv420p", acodec="aac", ac=1,
            ar=SAMPLE_RATE, threads=1, map_metadata=-1, fflags="+bitexact", format="mp4",
            **{"q:v": 4, "b:a": "48k", "flags:v": "+bitexact", "flags:a": "+bitexact"})
        try:
            stream.overwrite_output().run(cmd=imageio_ffmpeg.get_ffmpeg_exe(), input=frames.tobytes(),
                                          quiet=True)
        except ffmpeg.Error as err:
            lines = (err.stderr or b"").decode(errors="replace").strip().splitlines()
            raise InputError(path, f"ffmpeg failed: {lines[-1] if lines else err}") from None


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------

_MARKER = "avdata.synth"   # attributes.json "generator": lets a re-run replace an older synthetic corpus


def _ytid(rng: np.random.Generator) -> str:
    return "".join(_YTID_ALPHABET[i] for i in rng.integers(len(_YTID_ALPHABET), size=11))


@dataclass
class _IdentityPlan:
    """Where one identity's files go: YouTube-like video ids, and which file lands in which."""

    ytids: list[str]
    clothing: list[tuple[float, float, float]]   # per YTID: the same shirt throughout one video
    wav_paths: list[tuple[int, str]]             # (ytid index, "00001.wav")
    face_paths: list[tuple[int, str]]            # (ytid index, "0000375.jpg")
    mp4_paths: list[tuple[int, str]]             # (ytid index, "00001.mp4")


def _plan(at: IdentityAttributes, seed: int, clips: int, faces: int, videos: int) -> _IdentityPlan:
    rng = np.random.default_rng([seed, _K_LAYOUT, at.index])
    n_ytids = int(rng.integers(2, 4))
    ytids: list[str] = []
    while len(ytids) < n_ytids:
        y = _ytid(rng)
        if y not in ytids:
            ytids.append(y)
    clothing = [tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)) for _ in ytids]

    def numbered(count: int, fmt: str, first, step) -> list[tuple[int, str]]:
        # spread the files over the videos (every video gets one before any gets two),
        # numbering within each video as VoxCeleb does
        order = [k % n_ytids for k in range(count)]
        nxt = [int(first()) for _ in ytids]
        out = []
        for y in order:
            out.append((y, fmt.format(nxt[y])))
            nxt[y] += int(step())
        return out

    wavs = numbered(clips, "{:05d}.wav", lambda: 1, lambda: 1)
    face_files = numbered(faces, "{:07d}.jpg", lambda: rng.integers(0, 3000), lambda: rng.integers(25, 900))
    mp4s = numbered(videos, "{:05d}.mp4", lambda: 1, lambda: 1)
    return _IdentityPlan(ytids, clothing, wavs, face_files, mp4s)


def _write_identity(out: Path, at: IdentityAttributes, seed: int, clips: int, faces: int,
                    videos: int) -> tuple[int, int, int]:
    plan = _plan(at, seed, clips, faces, videos)
    for k, (y, fname) in enumerate(plan.wav_paths):
        rng = np.random.default_rng([seed, _K_WAV, at.index, k])
        audio, _ = synth_voice(at, rng, float(rng.uniform(4.0, 7.9)))
        path = out / "wav" / at.vox_id / plan.ytids[y] / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    for k, (y, fname) in enumerate(plan.face_paths):
        rng = np.random.default_rng([seed, _K_FACE, at.index, k])
        img = render_face(at, rng, clothing=plan.clothing[y])
        path = out / "faces" / at.name / plan.ytids[y] / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=92)   # PIL writes no EXIF or timestamps by default
    for k, (y, fname) in enumerate(plan.mp4_paths):
        rng = np.random.default_rng([seed, _K_VIDEO, at.index, k])
        _write_video(out / "mp4" / at.vox_id / plan.ytids[y] / fname, at, rng, plan.clothing[y])
    return len(plan.wav_paths), len(plan.face_paths), len(plan.mp4_paths)


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear a previous synthetic corpus there so a re-run equals a fresh run."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        marker = out / "attributes.json"
        try:
            ours = json.loads(marker.read_text()).get("generator") == _MARKER
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InputError(out, "directory is not empty and holds no synthetic corpus; choose a new or empty one")
        for sub in ("wav", "faces", "mp4"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("vox1_meta.csv", "attributes.json", "identity_splits.txt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def synth_corpus(out: str | Path, identities: int = 60, clips_per_identity: int = 4,
                 faces_per_identity: int = 4, videos: bool = False, videos_per_identity: int = 1,
                 seed: int = 0, progress: bool = False, workers: int = 1) -> dict:
    """Write a synthetic VoxCeleb1-layout corpus to `out` and return a summary.

    Same arguments -> byte-identical files. `out` must be new, empty, or an earlier synthetic
    corpus (which is replaced). `workers` > 1 renders identities in parallel processes; the
    files are the same either way.
    """
    _check_count("identities", identities, minimum=3, maximum=8999)
    _check_count("clips_per_identity", clips_per_identity, minimum=1, maximum=1000)
    _check_count("faces_per_identity", faces_per_identity, minimum=1, maximum=1000)
    _check_count("videos_per_identity", videos_per_identity, minimum=1, maximum=100)
    _check_count("workers", workers, minimum=1, maximum=256)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    _prepare_out(out)
    people = corpus_attributes(identities, seed)
    n_videos = videos_per_identity if videos else 0

    jobs = [(out, at, seed, clips_per_identity, faces_per_identity, n_videos) for at in people]
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="synth identities", unit="id", disable=not progress)
    counts = []
    if workers == 1:
        for job in jobs:
            counts.append(_write_identity(*job))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # "spawn": the caller may already hold torch/BLAS thread pools, which do not survive fork()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for c in pool.map(_write_identity_job, jobs):
                counts.append(c)
                bar.update()
    bar.close()

    lines = [META_HEADER] + [f"{at.vox_id}\t{at.name}\t{at.gender}\t{at.nationality}\t{at.set}" for at in people]
    (out / "vox1_meta.csv").write_text("\n".join(lines) + "\n")
    truth = {"generator": _MARKER, "seed": seed, "note": "hidden ground truth for tests and analysis; "
             "not an input to training", "identities": [asdict(at) for at in people]}
    (out / "attributes.json").write_text(json.dumps(truth, indent=1) + "\n")
    # A Learnable-PINs style identity split (sets 1/2/4) so the pins protocol runs on the corpus too.
    from avdata.splits import make_pins_sets, write_pins_sets

    write_pins_sets(make_pins_sets([at.name for at in people], seed), out / "identity_splits.txt")

    splits = {"val": 0, "test": 0, "train": 0}
    for at in people:
        first = at.name[0].upper()
        splits["val" if first in "AB" else "test" if first in "CDE" else "train"] += 1
    return {"out": str(out), "identities": len(people), "wavs": sum(c[0] for c in counts),
            "faces": sum(c[1] for c in counts), "videos": sum(c[2] for c in counts), "seed": seed,
            "matching_splits": splits}


def _write_identity_job(job):
    return _write_identity(*job)
