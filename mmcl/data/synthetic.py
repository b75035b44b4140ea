"""The embedded benchmark: a deterministic generator of paired multi-modal samples.

A *concept* is a (shape, colour, texture) triple. Its meaning is shared by every modality:

- image: the shape, filled with its colour and texture, on a domain-styled background;
- video: the same object moving along a concept-specific path and spinning;
- audio: a tone whose pitch comes from the shape, harmonics from the texture and amplitude
  modulation rate from the colour;
- depth: a 2.5-D height map of the shape (plateau height from the colour, relief from the texture);
- acc / gyro: tri-axial motion whose frequency, axis mix and amplitude come from the attributes;
- text: a caption/transcript naming a random subset of the attributes, in the domain's language.

Of the 256 concepts, a fixed quarter (64) is reserved for continual learning; the other 192 are
the *pre-training concepts* on which the tiny CLIP of the ``tiny``/``smoke`` profiles is trained,
so every attribute is known to the backbone but no continual-learning class was seen as a whole.

Domains change style, not the label: background, noise, object hue, pitch shift, motion speed
and caption language. Hue and pitch shifts move a class's appearance towards other classes', so
learning a new domain interferes with earlier ones, as in real domain-incremental data. Every chunk (concept, domain, split, modality) draws from its own
``numpy.random.SeedSequence``, so a sample's bytes depend only on the seed and its coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_VERSION = 2

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "crescent")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
TEXTURES = ("plain", "striped", "checkered", "dotted")
RGB = np.array(
    [
        [0.86, 0.16, 0.14], [0.18, 0.68, 0.24], [0.18, 0.32, 0.90], [0.96, 0.86, 0.18],
        [0.58, 0.24, 0.76], [0.97, 0.55, 0.08], [0.16, 0.80, 0.86], [0.97, 0.52, 0.72],
    ],
    dtype=np.float32,
)
# Backgrounds of the style domains (d % 5) and of pre-training (random mixtures of these).
BACKGROUNDS = np.array(
    [[0.50, 0.50, 0.50], [0.12, 0.14, 0.30], [0.86, 0.80, 0.66], [0.12, 0.28, 0.16], [0.36, 0.20, 0.34]],
    dtype=np.float32,
)
PITCH_SHIFT_SEMITONES = (0.0, 1.5, -1.5, 3.0, -3.0)
# Domains rotate object hues (degrees about the grey axis): what reads as "red" in one domain
# reads as orange or pink in another, so domains conflict rather than only add nuisance.
HUE_SHIFT_DEGREES = (0.0, 50.0, -50.0, 100.0, -100.0)
SPEED_FACTOR = (1.0, 1.3, 0.75, 1.6, 0.55)

VOCABULARY = {
    "en": {
        "colours": COLOURS,
        "shapes": SHAPES,
        "textures": ("plain", "striped", "checkered", "dotted"),
        "templates": ("i can see a {}", "there is a {} here", "look, a {}", "that one is a {}"),
    },
    "de": {
        "colours": ("rot", "grün", "blau", "gelb", "lila", "orange", "türkis", "rosa"),
        "shapes": ("kreis", "quadrat", "dreieck", "raute", "kreuz", "ring", "balken", "sichel"),
        "textures": ("einfarbig", "gestreift", "kariert", "gepunktet"),
        "templates": ("ich sehe ein {}", "da ist ein {}", "schau, ein {}", "das ist ein {}"),
    },
    "es": {
        "colours": ("rojo", "verde", "azul", "amarillo", "morado", "naranja", "cian", "rosa"),
        "shapes": ("círculo", "cuadrado", "triángulo", "rombo", "cruz", "anillo", "barra", "luna"),
        "textures": ("liso", "rayado", "cuadriculado", "punteado"),
        "templates": ("veo un {}", "hay un {} aquí", "mira, un {}", "eso es un {}"),
    },
    "pl": {
        "colours": ("czerwony", "zielony", "niebieski", "żółty", "fioletowy", "pomarańczowy", "błękitny", "różowy"),
        "shapes": ("koło", "kwadrat", "trójkąt", "romb", "krzyż", "pierścień", "pasek", "półksiężyc"),
        "textures": ("gładki", "paskowany", "kratkowany", "kropkowany"),
        "templates": ("widzę {}", "tu jest {}", "patrz, {}", "to jest {}"),
    },
    "ko": {
        "colours": ("ppalgan", "choroksaek", "paran", "norang", "borasaek", "juhwang", "haneul", "bunhong"),
        "shapes": ("wonhyeong", "nemo", "semo", "marumo", "sipja", "gori", "makdae", "chosungdal"),
        "textures": ("mingmin", "julmunui", "bangyeok", "jeommunui"),
        "templates": ("{} boyeoyo", "yeogi {} isseoyo", "bwa, {}", "geugeon {} ieyo"),
    },
}
MODALITY_STREAM_KEYS = {"image": 0, "video": 1, "audio": 2, "depth": 3, "acc": 4, "gyro": 5, "text": 6}


@dataclass(frozen=True)
class Concept:
    shape: int
    colour: int
    texture: int

    @property
    def index(self) -> int:
        return self.shape * 32 + self.colour * 4 + self.texture

    @classmethod
    def from_index(cls, index: int) -> "Concept":
        return cls(index // 32, (index // 4) % 8, index % 4)

    @property
    def name(self) -> str:
        return f"{COLOURS[self.colour]} {TEXTURES[self.texture]} {SHAPES[self.shape]}"


def continual_concepts() -> list[Concept]:
    """The 64 continual-learning concepts in a fixed, attribute-diverse order."""
    pool = [Concept.from_index(i) for i in range(256) if (i // 32 + (i // 4) % 8 + i % 4) % 4 == 0]
    order = np.random.default_rng(20250311).permutation(len(pool))
    return [pool[i] for i in order]


def pretraining_concepts() -> list[Concept]:
    """The 192 concepts the tiny backbone is pre-trained on (disjoint from the continual ones)."""
    held_out = {c.index for c in continual_concepts()}
    return [Concept.from_index(i) for i in range(256) if i not in held_out]


def language_of(domain: str) -> str:
    return domain.lower() if domain.lower() in VOCABULARY else "en"


# --------------------------------------------------------------------------------------- images
def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.sqrt(u**2 + v**2)
    if shape == 0:
        return r < 1.0
    if shape == 1:
        return np.maximum(np.abs(u), np.abs(v)) < 0.82
    if shape == 2:
        return (v > -0.6) & (np.sqrt(3.0) * np.abs(u) + v < 0.9)
    if shape == 3:
        return np.abs(u) + np.abs(v) < 1.05
    if shape == 4:
        return ((np.abs(u) < 0.32) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.32) & (np.abs(u) < 1.0))
    if shape == 5:
        return (r < 1.0) & (r > 0.55)
    if shape == 6:
        return (np.abs(u) < 1.05) & (np.abs(v) < 0.38)
    return (r < 1.0) & (np.sqrt((u - 0.45) ** 2 + v**2) > 0.75)


def _texture(texture: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 where the object shows its full colour, 0 where it shows the darker shade."""
    if texture == 0:
        return np.ones_like(u)
    if texture == 1:
        return (np.sin(u * np.pi * 2.2) > 0).astype(np.float32)
    if texture == 2:
        return (np.sin(u * np.pi * 2.2) * np.sin(v * np.pi * 2.2) > 0).astype(np.float32)
    du, dv = (u * 1.6) % 1.0 - 0.5, (v * 1.6) % 1.0 - 0.5
    return (du**2 + dv**2 > 0.06).astype(np.float32)


def rotate_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours ``[..., 3]`` about the grey axis of RGB space (Rodrigues' formula)."""
    if degrees == 0:
        return rgb
    theta = np.deg2rad(degrees)
    axis = np.full(3, 1 / np.sqrt(3), dtype=np.float32)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=np.float32)
    rotation = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(axis, axis)
    return np.clip(rgb @ rotation.T.astype(np.float32), 0, 1)


def _draw(concept: Concept, size: int, centre: np.ndarray, scale: np.ndarray, angle: np.ndarray,
          background: np.ndarray, noise: np.ndarray, rng: np.random.Generator, as_height: bool = False,
          hue_shift: float = 0.0) -> np.ndarray:
    """Render n objects. Returns ``[n, size, size, 3]`` RGB (or ``[n, size, size]`` heights)."""
    n = len(centre)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(-axis, axis, indexing="ij")
    dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    mask = _shape_mask(concept.shape, u, v).astype(np.float32)
    pattern = _texture(concept.texture, u, v)
    if as_height:
        level = 0.35 + 0.65 * concept.colour / 7.0
        height = mask * (level + 0.18 * pattern)
        tilt = rng.uniform(-0.08, 0.08, size=(n, 2)).astype(np.float32)
        height = height + 0.1 + tilt[:, 0, None, None] * x + tilt[:, 1, None, None] * y
        return height + rng.normal(0, 1, size=height.shape).astype(np.float32) * noise[:, None, None]
    base = rotate_hue(RGB[concept.colour], hue_shift)
    colour = np.clip(base[None] + rng.normal(0, 0.04, size=(n, 3)), 0, 1).astype(np.float32)
    shade = (0.4 + 0.6 * pattern)[..., None] * colour[:, None, None, :]
    image = mask[..., None] * shade + (1 - mask[..., None]) * background[:, None, None, :]
    image = image + rng.normal(0, 1, size=image.shape).astype(np.float32) * noise[:, None, None, None]
    return np.clip(image, 0, 1)


def _pose(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centre = rng.uniform(-0.22, 0.22, size=(n, 2)).astype(np.float32)
    scale = rng.uniform(0.48, 0.64, size=n).astype(np.float32)
    angle = rng.uniform(-0.35, 0.35, size=n).astype(np.float32)
    return centre, scale, angle


def _style(domain_index: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    base = BACKGROUNDS[domain_index % len(BACKGROUNDS)]
    background = np.clip(base[None] + rng.normal(0, 0.03, size=(n, 3)), 0, 1).astype(np.float32)
    noise = np.full(n, 0.03 + 0.025 * (domain_index % 5), dtype=np.float32)
    return background, noise


def render_images(concept: Concept, n: int, size: int, domain_index: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, size, size, 3]`` float images in [0, 1]."""
    background, noise = _style(domain_index, n, rng)
    return _draw(concept, size, *_pose(n, rng), background, noise, rng, hue_shift=HUE_SHIFT_DEGREES[domain_index % 5])


def render_pretraining_images(concept: Concept, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pre-training images: like :func:`render_images` with a random mixture of domain styles."""
    mix = rng.dirichlet(np.ones(len(BACKGROUNDS)), size=n).astype(np.float32)
    background = np.clip(mix @ BACKGROUNDS + rng.normal(0, 0.05, size=(n, 3)), 0, 1).astype(np.float32)
    noise = rng.uniform(0.02, 0.12, size=n).astype(np.float32)
    return _draw(concept, size, *_pose(n, rng), background, noise, rng)


def render_videos(concept: Concept, n: int, size: int, frames: int, domain_index: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``[n, frames, size, size, 3]``: the object moves along a concept-specific path and spins."""
    background, noise = _style(domain_index, n, rng)
    centre, scale, angle = _pose(n, rng)
    path = 2 * np.pi * ((concept.shape + 3 * concept.colour + 5 * concept.texture) % 8) / 8
    direction = np.array([np.cos(path), np.sin(path)], dtype=np.float32)
    speed = 0.5 * SPEED_FACTOR[domain_index % 5]
    spin = (concept.texture - 1.5) * 0.5
    steps = (np.arange(frames, dtype=np.float32) + 0.5) / frames - 0.5
    clips = []
    for step in steps:  # a handful of frames; each frame is vectorised over the n samples
        clips.append(_draw(concept, size, centre * 0.5 + speed * step * direction, scale,
                           angle + spin * step * 2, background, noise, rng,
                           hue_shift=HUE_SHIFT_DEGREES[domain_index % 5]))
    return np.stack(clips, axis=1)


def render_depth(concept: Concept, n: int, size: int, domain_index: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, size, size]`` height maps (arbitrary units)."""
    _, noise = _style(domain_index, n, rng)
    return _draw(concept, size, *_pose(n, rng), np.zeros((n, 3), np.float32), noise * 0.5, rng, as_height=True)


# ----------------------------------------------------------------------------------- 1-D signals
HARMONICS = (
    ((1.0, 1.0),),
    ((1.0, 1.0), (3.0, 0.45), (5.0, 0.25)),
    ((1.0, 1.0), (2.0, 0.6), (3.0, 0.4), (4.0, 0.3)),
    ((1.0, 1.0), (2.76, 0.7), (5.4, 0.35)),
)


def synthesize_audio(concept: Concept, n: int, sample_rate: int, duration: float, domain_index: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``[n, samples]`` waveforms: pitch from shape, harmonics from texture, AM rate from colour."""
    t = np.arange(int(sample_rate * duration), dtype=np.float32) / sample_rate
    shift = 2 ** (PITCH_SHIFT_SEMITONES[domain_index % 5] / 12)
    f0 = 170.0 * 2 ** (concept.shape * 0.3) * shift * rng.uniform(0.98, 1.02, size=(n, 1))
    wave = np.zeros((n, len(t)), dtype=np.float32)
    for multiple, amplitude in HARMONICS[concept.texture]:
        frequency = np.minimum(f0 * multiple, sample_rate * 0.45)
        wave += amplitude * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi, size=(n, 1)))
    am_rate = 2.0 + 2.0 * concept.colour
    envelope = 1 - 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * am_rate * t + rng.uniform(0, 2 * np.pi, size=(n, 1))))
    wave = wave * envelope * rng.uniform(0.3, 0.6, size=(n, 1))
    noise_level = 0.02 + 0.02 * (domain_index % 5)
    return (wave + rng.normal(0, noise_level, size=wave.shape)).astype(np.float32)


def _axis_mix(index: int) -> np.ndarray:
    angle_a, angle_b = 2 * np.pi * index / 8, np.pi * (index % 3 + 1) / 4
    return np.array([np.cos(angle_a) * np.sin(angle_b), np.sin(angle_a) * np.sin(angle_b), np.cos(angle_b)],
                    dtype=np.float32)


def synthesize_inertial(concept: Concept, n: int, sample_rate: int, duration: float, sensor: str,
                        domain_index: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3, samples]`` accelerometer (``sensor='acc'``, m/s^2) or gyroscope (``'gyro'``, rad/s)."""
    t = np.arange(int(sample_rate * duration), dtype=np.float32) / sample_rate
    speed = SPEED_FACTOR[domain_index % 5]
    if sensor == "acc":
        frequency, axes, amplitude = (2.0 + 3.0 * concept.texture) * speed, _axis_mix(concept.shape), 2.0
        offset = np.array([0.0, 0.0, 9.81], dtype=np.float32)
    elif sensor == "gyro":
        frequency, axes, amplitude = (1.5 + 2.4 * concept.colour) * speed, _axis_mix(concept.colour + concept.shape), 1.2
        offset = np.zeros(3, dtype=np.float32)
    else:
        raise ValueError(f"unknown inertial sensor {sensor!r}")
    frequency = min(frequency, sample_rate * 0.45)
    jitter = rng.uniform(0.97, 1.03, size=(n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    wave = np.sin(2 * np.pi * frequency * jitter * t[None, None] + phase)
    second = 0.35 * np.sin(2 * np.pi * min(2 * frequency, sample_rate * 0.45) * t[None, None] + 2 * phase)
    signal = amplitude * (wave + second) * axes[None, :, None] + offset[None, :, None]
    noise_level = 0.15 + 0.1 * (domain_index % 5)
    return (signal + rng.normal(0, noise_level, size=signal.shape)).astype(np.float32)


def write_captions(concept: Concept, n: int, language: str, rng: np.random.Generator) -> list[str]:
    """Captions naming a random non-empty subset of the attributes, in ``language``."""
    words = VOCABULARY[language]
    captions = []
    for _ in range(n):
        keep = rng.random(3) < 0.5
        if not keep.any():
            keep[rng.integers(3)] = True
        parts = []
        if keep[0]:
            parts.append(words["colours"][concept.colour])
        if keep[1]:
            parts.append(words["textures"][concept.texture])
        parts.append(words["shapes"][concept.shape] if keep[2] else "thing" if language == "en" else "")
        template = words["templates"][rng.integers(len(words["templates"]))]
        captions.append(" ".join(template.format(" ".join(p for p in parts if p)).split()))
    return captions


def pretraining_captions(concept: Concept, n: int, rng: np.random.Generator) -> list[str]:
    """English captions for pre-training: the full name, or a partial one that names attributes."""
    colour, texture, shape = COLOURS[concept.colour], TEXTURES[concept.texture], SHAPES[concept.shape]
    forms = (
        f"a photo of a {colour} {texture} {shape}.", f"a {colour} {texture} {shape}.",
        f"a photo of a {colour} {shape}.", f"a {texture} {shape}.", f"a {colour} {texture} object.",
        f"a photo of a {shape}.", f"something {colour}.",
    )
    weights = np.array([4, 3, 2, 2, 1, 1, 1], dtype=np.float64)
    picks = rng.choice(len(forms), size=n, p=weights / weights.sum())
    return [forms[i] for i in picks]


def chunk_rng(seed: int, concept: Concept, domain_index: int, split: int, stream: str) -> np.random.Generator:
    """An independent generator for one (concept, domain, split, modality) chunk."""
    sequence = np.random.SeedSequence([seed, concept.index, domain_index, split, MODALITY_STREAM_KEYS[stream]])
    return np.random.default_rng(sequence)
