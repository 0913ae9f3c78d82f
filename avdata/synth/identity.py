"""Identities of the synthetic corpus: names, hidden attributes, voice and face parameters."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np

from avdata.corpora.voxceleb1 import MATCHING_SPLITS, matching_split
from avdata.errors import AvmatchError


class SynthError(AvmatchError, ValueError):
    """Settings the synthetic corpus cannot be written with (a count or the seed out of range)."""


# Sub-stream "kinds" for default_rng([seed, kind, identity, file]).
_K_ATTR, _K_WAV, _K_FACE, _K_VIDEO, _K_LAYOUT, _K_NAMES, _K_RECORDING = 0, 1, 2, 3, 4, 5, 6

# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

# First names by initial, (male, female). Initials ("A.J.") and hyphenated names
# ("Jean-Claude") mimic the punctuation of real VGGFace1 IDs.
_FIRST_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "A": (["Aaron", "Adrian", "A.J.", "Alan", "Anders"], ["Alicja", "Anne-Marie", "Amber", "Ava", "A.J."]),
    "B": (
        ["Bradley", "Bruno", "B.J.", "Barry", "Bjorn"],
        ["Bea", "Bonnie", "Brenda", "Beth-Ann", "Bingbing"],
    ),
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
_LAST_PREFIXES = [
    "Bar",
    "Cal",
    "Dun",
    "Fer",
    "Hal",
    "Kes",
    "Mor",
    "Pen",
    "Ros",
    "Sal",
    "Thorn",
    "Wal",
    "Ash",
    "Blen",
    "Car",
    "Del",
    "Gal",
    "Har",
    "Lind",
    "Mer",
    "Nor",
    "Ost",
    "Quill",
    "Rad",
    "Stan",
    "Tol",
    "Ven",
    "Wick",
    "Brad",
    "Cor",
    "Fair",
    "Gren",
]
_LAST_SUFFIXES = [
    "ton",
    "ley",
    "son",
    "well",
    "ford",
    "ridge",
    "man",
    "er",
    "ish",
    "by",
    "wood",
    "ham",
    "ken",
    "ard",
    "ini",
    "ez",
    "ova",
    "berg",
    "sky",
    "dale",
]
_LAST_PARTICLES = ["Van_", "De_", "Mc", "St._", "Le_", "Da_"]
_NATIONALITIES = ["USA", "UK", "Canada", "Australia", "India", "Ireland"]
_NATIONALITY_WEIGHTS = [0.5, 0.2, 0.1, 0.08, 0.07, 0.05]


def _split_letters() -> dict[str, str]:
    """First letters per matching split, from the protocol's own rule (avdata.corpora.voxceleb1.matching_split).

    E comes first within its split: E names form the official VoxCeleb1 "test" Set, and
    :func:`synth_names` cycles through the letters in this order, so even a tiny corpus has one.
    """
    letters = {split: "" for split in MATCHING_SPLITS}
    for letter in string.ascii_uppercase:
        letters[matching_split(letter)] += letter
    return {
        split: "".join(sorted(chars, key=lambda c: c != _OFFICIAL_TEST_INITIAL))
        for split, chars in letters.items()
    }


_OFFICIAL_TEST_INITIAL = "E"  # VoxCeleb1's Set column: "test" for names starting with E
_SPLIT_LETTERS = _split_letters()


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
    tilt: float  # pole of the glottal source's 2-pole low-pass (higher = darker voice)
    breath: float  # breath noise level relative to the voiced sound
    syllables_per_s: float
    jitter: float
    # face parameters
    face_width: float  # half-width of the head in face units (eye spacing is fixed)
    face_height: float  # half-height of the head in face units
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_length: float  # 0 = cropped, 1 = shoulder length
    grey: float  # fraction of grey in the hair
    beard: float  # 0 = clean-shaven, 1 = full beard
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
    tilt = 0.55 - 0.15 * brightness  # source low-pass pole: 0.22 (bright) .. 0.88 (dark)
    breath = 0.02 + 0.16 * _sigmoid(1.6 * breathiness)
    syllables_per_s = 4.3 * math.exp(0.25 * tempo)
    jitter = 0.004 + 0.02 * old

    # ---- face (face units: eye centres are +-0.40 apart horizontally, fixed)
    face_width = 1.0 - 0.10 * pitch + (0.04 if male else -0.02)
    face_height = 1.30 + 0.16 * vocal_tract + (0.03 if male else 0.0)
    light = _sigmoid(1.3 * brightness)  # dark brown .. pale
    skin = _mix((0.40, 0.25, 0.17), (0.96, 0.80, 0.70), light)
    hair_light = _sigmoid(1.4 * breathiness)  # black .. blond, via brown and auburn
    if hair_light < 0.5:
        hair = _mix((0.07, 0.05, 0.045), (0.40, 0.24, 0.13), hair_light * 2)
    else:
        hair = _mix((0.40, 0.24, 0.13), (0.86, 0.72, 0.45), hair_light * 2 - 1)
    grey = float(np.clip((age - 45) / 25, 0, 1)) * 0.5
    # women: higher voice -> longer hair; men: short hair (the beard carries pitch)
    hair_length = float(
        np.clip(0.75 + 0.13 * pitch + rng.uniform(-0.05, 0.05), 0.4, 1.0)
        if not male
        else rng.uniform(0.0, 0.2)
    )
    beard = float(np.clip(0.55 - 0.55 * pitch, 0, 1)) if male else 0.0
    eye_size = 1.0 + 0.18 * tempo
    brow_thickness = (0.042 if male else 0.032) * math.exp(-0.18 * pitch)
    lip = (0.72, 0.30, 0.32) if not male else (0.62, 0.38, 0.36)
    lip = _mix(lip, tuple(c * 0.75 for c in skin), 0.35)
    iris = _mix((0.20, 0.12, 0.06), (0.30, 0.45, 0.60), float(rng.random()) * light)

    return IdentityAttributes(
        index=index,
        vox_id=f"id{10001 + index}",
        name=name,
        gender=gender,
        nationality=nationality,
        set="test" if name[0].upper() == _OFFICIAL_TEST_INITIAL else "dev",
        age=round(age, 3),
        pitch=pitch,
        vocal_tract=vocal_tract,
        brightness=brightness,
        breathiness=breathiness,
        tempo=tempo,
        f0_hz=f0,
        formant_scale=formant_scale,
        tilt=float(np.clip(tilt, 0.2, 0.9)),
        breath=breath,
        syllables_per_s=syllables_per_s,
        jitter=jitter,
        face_width=face_width,
        face_height=face_height,
        skin_rgb=skin,
        hair_rgb=hair,
        hair_length=hair_length,
        grey=grey,
        beard=beard,
        eye_size=eye_size,
        brow_thickness=brow_thickness,
        lip_rgb=lip,
        iris_rgb=iris,
    )


def corpus_attributes(identities: int = 60, seed: int = 0) -> list[IdentityAttributes]:
    """Hidden attributes of every identity of `synth_corpus(identities=..., seed=...)`, in id order."""
    return [
        _attributes(i, name, gender, seed) for i, (name, gender) in enumerate(synth_names(identities, seed))
    ]


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
        raise SynthError(f"{what} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise SynthError(f"{what} must be between {minimum} and {maximum}, got {value}")
