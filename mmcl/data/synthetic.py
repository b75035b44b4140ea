"""The embedded benchmark: a deterministic generator of paired multi-modal samples.

A *concept* is a (shape, colour, texture) triple. Its meaning is shared by every modality:

- image: the shape, filled with its colour and texture, on a domain-styled background;
- video: the same object moving along a concept-specific path and spinning;
- audio: a tone whose pitch comes from the shape, harmonics from the texture and amplitude
  modulation rate from the colour;
- depth: a 2.5-D height map of the shape (plateau height from the colour, relief from the texture);
- acc / gyro: tri-axial motion whose frequency, axis mix and amplitude come from the attributes;
- text: a caption/transcript naming a random subset of the attributes, in the domain's language.

Of the 256 concepts, 64 are reserved for continual learning: 32 (colour, shape) pairs, each with
two textures (the two *pair-mates*). The other 192 are the *pre-training concepts* on which the
tiny CLIP of the ``tiny``/``smoke`` profiles is trained. Pre-training captions name colours and
shapes, or a texture alone, never a texture with a colour or a shape, so a continual class name
("red striped circle") is a combination no caption names, and what tells a class from its
pair-mate was never captioned with either: zero-shot transfer finds the (colour, shape) pair far
more easily than the class.

Twins (version 5). Two classes that share every defining cue but one are *twins*; a twin learnt
in a later task, from a cue never contrasted with the earlier class, absorbs it. The first 16
pairs (:func:`continual_pairs`) are chosen so that the only twins among their 32 classes are
pair-mates (shape = colour or colour + 2, modulo 8, with the two pairs of a colour, and the two
of a shape, on different texture sets), and :func:`benchmark_concepts` gives a benchmark of up to
32 classes from them; a class-incremental stream keeps each group of twins in one task
(:func:`twin_groups`, ``mmcl.data.scenarios``). When a task's size is odd, each task gets one
class whose pair-mate is not in the benchmark.

:class:`Difficulty` sets the intra-class variation and nuisance (``data.generator`` in a profile):
per-sample jitter of the defining cues (neighbouring classes' cue distributions overlap), sensor
noise and clutter, distractor objects/tones/motions and occluders.

Domains (``domain_style`` of a benchmark) are either ``"speaker"`` (SAMSEMO-like: a domain
changes the caption language, the speaker's appearance and voice timbre, the background and the
recording conditions, never a class's defining cue) or ``"conflicting"`` (a stress test: object
hues rotate, pitch and motion speed shift, moving classes onto each other's cues). Every chunk
(concept, domain, split, modality) draws from its own ``numpy.random.SeedSequence``, so a
sample's bytes depend only on the seed, the difficulty and its coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 4: generated on one BLAS thread (generate_synthetic): version 3's modality streams depended on the
# machine's BLAS thread count (a numpy product summed in another order); other benchmarks unchanged.
# 5: a benchmark's classes come from twin-free pairs first (benchmark_concepts), and class-incremental
# streams keep twins in one task; a back wall in depth maps (DEPTH_WALL_HEIGHT). Pre-training images
# are RGB: unchanged.
GENERATOR_VERSION = 5
# What the tiny backbone's pre-training reads (its concepts, images and captions): unchanged by
# version 5, whose change is which continual concepts a benchmark takes, so the backbones stay.
PRETRAINING_VERSION = 4

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
# "conflicting" domains only: pitch shift, hue rotation (degrees about the grey axis: what reads
# as "red" in one domain reads as orange or pink in another) and motion speed move class cues.
PITCH_SHIFT_SEMITONES = (0.0, 1.5, -1.5, 3.0, -3.0)
HUE_SHIFT_DEGREES = (0.0, 50.0, -50.0, 100.0, -100.0)
SPEED_FACTOR = (1.0, 1.3, 0.75, 1.6, 0.55)
DOMAIN_STYLES = ("speaker", "conflicting")
# "speaker" domains (index d % 5): a speaker's appearance (a body/face patch of this colour behind
# the object), lighting gain, voice formant (Hz) and room reverberation time (s); all leave the
# class cues (object hue and shape, pitch, harmonics, AM rate, motion frequency) unchanged.
SPEAKER_PATCH = np.array(
    [[0.80, 0.62, 0.50], [0.45, 0.30, 0.22], [0.92, 0.78, 0.66], [0.60, 0.44, 0.34], [0.30, 0.22, 0.18]],
    dtype=np.float32,
)
SPEAKER_GAIN = (1.0, 0.85, 1.1, 0.75, 0.95)
SPEAKER_FORMANT_HZ = (0.0, 700.0, 1100.0, 1600.0, 2300.0)
SPEAKER_REVERB_S = (0.0, 0.04, 0.08, 0.02, 0.12)
# Inertial motion frequency between neighbouring classes (Hz): by texture (acc), by colour (gyro).
INERTIAL_STEP_HZ = {"acc": 3.0, "gyro": 2.4}
# Depth maps (version 5): a back wall at this height fills the top rows, so that the per-map min-max
# normalisation (mmcl.data.modalities.depth_to_tensor) keeps the object's plateau height (its colour cue).
DEPTH_WALL_HEIGHT = 1.6

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
class Difficulty:
    """Calibration knobs (``data.generator`` of a profile); all zero gives clean class cues.

    - ``cue_jitter``: per-sample spread of each class's defining cues, in units of the distance
      between neighbouring classes' cues (hue, pitch, AM rate, motion frequency, axis, pattern
      frequency and contrast, shape aspect); at 1 neighbouring classes' cue distributions overlap.
    - ``nuisance``: sensor noise, background clutter, gain and pose variation.
    - ``distractors``: other objects drawn beside the class object, other tones mixed into its
      audio, other motions added to its inertial signals (each of a random attribute).
    - ``occlusion``: probability that an occluder hides part of the object (images, video,
      depth) or a gap silences part of the signal (audio, inertial).
    - ``inertial_jitter``: per-sample spread of the inertial motion frequencies, in the units of
      ``cue_jitter``: a standard deviation of 0.45 times the distance between neighbouring classes'
      frequencies per unit, as the hue's and the pitch's. ``cue_jitter``'s own reach there is a
      factor exp(N(0, 0.1 * cue_jitter)) of the frequency, a few hundredths of that distance.
    - ``domain_shift``: how far a domain's recording conditions lie from domain 0's, as a multiple
      of version 5's: the background's and the speaker's colours, the lighting and voice gain, the
      voice formant's strength, the room's reverberation and the sensor noise that grows with the
      domain. At 0 the domains differ in their language alone; the class cues never move
      (a "conflicting" domain's hue, pitch and speed shifts are not scaled).
    """

    cue_jitter: float = 0.0
    nuisance: float = 0.0
    distractors: int = 0
    occlusion: float = 0.0
    inertial_jitter: float = 0.0
    domain_shift: float = 1.0


@dataclass(frozen=True)
class DomainStyle:
    """How domain ``index`` changes the data: ``style`` is "speaker" or "conflicting"."""

    index: int = 0
    style: str = "speaker"

    def __post_init__(self):
        if self.style not in DOMAIN_STYLES:
            raise ValueError(f"unknown domain style {self.style!r}; known: {list(DOMAIN_STYLES)}")

    @property
    def slot(self) -> int:
        return self.index % 5

    @property
    def hue_shift(self) -> float:
        return HUE_SHIFT_DEGREES[self.slot] if self.style == "conflicting" else 0.0

    @property
    def pitch_factor(self) -> float:
        return 2 ** (PITCH_SHIFT_SEMITONES[self.slot] / 12) if self.style == "conflicting" else 1.0

    @property
    def speed(self) -> float:
        return SPEED_FACTOR[self.slot] if self.style == "conflicting" else 1.0


CLEAN = Difficulty()


def _toward(start, end, shift: float):
    """``end`` moved ``shift`` of the way from ``start``: ``end`` itself (its exact bytes) at 1."""
    return end if shift == 1 else np.asarray(start) + shift * (np.asarray(end) - np.asarray(start))


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


def continual_pairs() -> list[tuple[int, int]]:
    """The 32 (shape, colour) pairs of the continual classes (shape + colour even), each half in a
    fixed, attribute-diverse order: first the 16 *twin-free* pairs (shape = colour or colour + 2,
    modulo 8), among whose classes only pair-mates share all cues but one, then the other 16."""
    pool = [(shape, colour) for shape in range(8) for colour in range(8) if (shape + colour) % 2 == 0]
    twin_free = [(shape, colour) for shape, colour in pool if (shape - colour) % 8 in (0, 2)]
    rest = [pair for pair in pool if pair not in twin_free]
    rng = np.random.default_rng(20250311)
    return [twin_free[i] for i in rng.permutation(len(twin_free))] + [rest[i] for i in rng.permutation(len(rest))]


TWIN_FREE_PAIRS = 16


def continual_concepts() -> list[Concept]:
    """The 64 continual-learning concepts: each pair of :func:`continual_pairs` with two textures
    (plain/checkered or striped/dotted, by the parity of (shape + colour) / 2), pair-mates adjacent."""
    flips = np.random.default_rng(20250312).integers(0, 2, size=32)
    concepts = []
    for (shape, colour), flip in zip(continual_pairs(), flips):
        first = ((shape + colour) // 2) % 2
        textures = (first, first + 2) if not flip else (first + 2, first)
        concepts += [Concept(shape, colour, t) for t in textures]
    return concepts


def benchmark_concepts(num_classes: int, num_tasks: int = 1) -> list[Concept]:
    """The classes of a benchmark of ``num_classes`` classes in ``num_tasks`` equal tasks.

    Whole pairs of :func:`continual_concepts`, in order; when the tasks' size is odd (more than one
    task), each task also gets one class without its pair-mate: the first mate of the ``num_tasks``
    pairs after the whole ones. Up to 32 classes (16 pairs) no two classes but pair-mates are twins.
    """
    concepts = continual_concepts()
    odd_tasks = num_tasks > 1 and num_classes % num_tasks == 0 and (num_classes // num_tasks) % 2 == 1
    if not odd_tasks:
        if num_classes > len(concepts):
            raise ValueError(f"the embedded benchmark has at most {len(concepts)} continual-learning classes")
        return concepts[:num_classes]
    whole = (num_classes - num_tasks) // 2
    if whole + num_tasks > len(concepts) // 2:
        raise ValueError(f"the embedded benchmark cannot give {num_classes} classes in {num_tasks} tasks of "
                         f"{num_classes // num_tasks} (at most {len(concepts) // 2} pairs)")
    return concepts[:2 * whole] + [concepts[2 * (whole + k)] for k in range(num_tasks)]


def concept_of_name(name: str) -> Concept:
    """The concept of an English class name ("red striped circle")."""
    try:
        colour, texture, shape = name.split(" ")
        return Concept(SHAPES.index(shape), COLOURS.index(colour), TEXTURES.index(texture))
    except ValueError:
        raise ValueError(f"{name!r} is not a class name of the embedded benchmark") from None


def are_twins(a: Concept, b: Concept) -> bool:
    """True when two concepts share every defining cue (shape, colour, texture) but one."""
    return (a.shape != b.shape) + (a.colour != b.colour) + (a.texture != b.texture) == 1


def twin_groups(class_names: list[str]) -> list[list[int]]:
    """The classes (indices into ``class_names``) linked by chains of twins, each group in class
    order, the groups ordered by their first class: what a class-incremental stream keeps in one task."""
    concepts = [concept_of_name(name) for name in class_names]
    parent = list(range(len(concepts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(concepts)):
        for j in range(i + 1, len(concepts)):
            if are_twins(concepts[i], concepts[j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(concepts)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda group: group[0])


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


def _texture(texture: int, u: np.ndarray, v: np.ndarray, frequency: np.ndarray | float = 2.2) -> np.ndarray:
    """1 where the object shows its full colour, 0 where it shows the darker shade."""
    if texture == 0:
        return np.ones_like(u)
    if texture == 1:
        return (np.sin(u * np.pi * frequency) > 0).astype(np.float32)
    if texture == 2:
        return (np.sin(u * np.pi * frequency) * np.sin(v * np.pi * frequency) > 0).astype(np.float32)
    step = frequency * 1.6 / 2.2
    du, dv = (u * step) % 1.0 - 0.5, (v * step) % 1.0 - 0.5
    return (du**2 + dv**2 > 0.06).astype(np.float32)


def _rotation(degrees: np.ndarray) -> np.ndarray:
    """``[n, 3, 3]`` rotations about the grey axis of RGB space (Rodrigues' formula)."""
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))[:, None, None]
    axis = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(axis, axis)).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(-axis, axis, indexing="ij")
    return x, y


def _frame_uv(x, y, centre, scale, angle, aspect=None):
    dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    if aspect is not None:
        u, v = u / aspect[:, None, None], v * aspect[:, None, None]
    return u, v


def _masks(shapes: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-sample shape masks ``[n, H, W]`` for per-sample shape ids."""
    out = np.zeros(u.shape, dtype=np.float32)
    for shape in np.unique(shapes):
        pick = shapes == shape
        out[pick] = _shape_mask(int(shape), u[pick], v[pick])
    return out


def _patterns(textures: np.ndarray, u: np.ndarray, v: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    out = np.ones(u.shape, dtype=np.float32)
    for texture in np.unique(textures):
        pick = textures == texture
        out[pick] = _texture(int(texture), u[pick], v[pick], frequency[pick, None, None])
    return out


@dataclass
class _Scene:
    """Per-sample draws of one chunk of images (shared by the frames of a video)."""

    concept: Concept
    colour: np.ndarray  # [n, 3]
    level: np.ndarray  # [n] depth plateau height
    aspect: np.ndarray
    frequency: np.ndarray  # texture pattern frequency
    contrast: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    background: np.ndarray  # [n, H, W, 3]
    patch: np.ndarray | None  # speaker patch colour [n, 3]
    distractors: list[dict]
    occluder: dict
    gain: np.ndarray
    noise: np.ndarray


def _scene(concept: Concept, n: int, size: int, difficulty: Difficulty, domain: DomainStyle | None,
           rng: np.random.Generator) -> _Scene:
    j, q = difficulty.cue_jitter, difficulty.nuisance
    # Colour: the domain's hue rotation ("conflicting" only), then per-sample hue and brightness jitter
    # (neighbouring colours are about 45 degrees apart on the hue circle).
    hue = (domain.hue_shift if domain else 0.0) + rng.normal(0, 20.0 * j, size=n)
    colour = np.einsum("nij,j->ni", _rotation(hue), RGB[concept.colour])
    colour = colour * (1 + rng.normal(0, 0.12 * j, size=(n, 1))) + rng.normal(0, 0.04, size=(n, 3))
    level = 0.35 + 0.65 * concept.colour / 7.0 + rng.normal(0, 0.06 * j, size=n)
    aspect = np.exp(rng.normal(0, 0.15 * j, size=n))
    frequency = 2.2 * np.exp(rng.normal(0, 0.2 * j, size=n))
    contrast = 0.6 * rng.uniform(max(0.15, 1 - 0.7 * j), 1.0, size=n) if j > 0 else np.full(n, 0.6)
    spread = 0.22 + 0.12 * q
    centre = rng.uniform(-spread, spread, size=(n, 2))
    scale = rng.uniform(0.48 - 0.1 * min(q, 1.5), 0.64, size=n)
    angle = rng.uniform(-0.35 - 0.8 * q, 0.35 + 0.8 * q, size=n)
    x, y = _grid(size)
    if domain is None:  # pre-training: a random mixture of the domain backgrounds
        mix = rng.dirichlet(np.ones(len(BACKGROUNDS)), size=n)
        base = np.clip(mix @ BACKGROUNDS + rng.normal(0, 0.05, size=(n, 3)), 0, 1)
        noise = rng.uniform(0.02, 0.12, size=n)
    else:
        shift = difficulty.domain_shift
        background = _toward(BACKGROUNDS[0], BACKGROUNDS[domain.slot], shift)
        base = np.clip(background[None] + rng.normal(0, 0.03, size=(n, 3)), 0, 1)
        noise = np.full(n, 0.03 + 0.025 * domain.slot * shift)
    background = np.broadcast_to(base[:, None, None, :], (n, size, size, 3)).copy()
    if q > 0:  # clutter: soft blobs of random colours
        for _ in range(3):
            at = rng.uniform(-1, 1, size=(n, 2))
            width = rng.uniform(0.2, 0.6, size=n)
            blob = np.exp(-((x[None] - at[:, 0, None, None]) ** 2 + (y[None] - at[:, 1, None, None]) ** 2)
                          / (2 * width[:, None, None] ** 2))
            tint = rng.uniform(-0.3, 0.3, size=(n, 3)) * min(q, 2.0)
            background += blob[..., None] * tint[:, None, None, :]
    patch = None
    if domain is not None and domain.style == "speaker":
        speaker = _toward(SPEAKER_PATCH[0], SPEAKER_PATCH[domain.slot], difficulty.domain_shift)
        patch = np.clip(speaker[None] + rng.normal(0, 0.03, size=(n, 3)), 0, 1)
    distractors = []
    for _ in range(difficulty.distractors):
        distractors.append({
            "shape": rng.integers(0, 8, size=n), "texture": rng.integers(0, 4, size=n),
            "colour": np.clip(RGB[rng.integers(0, 8, size=n)] + rng.normal(0, 0.04, size=(n, 3)), 0, 1),
            "level": rng.uniform(0.35, 1.0, size=n),
            "centre": rng.uniform(-0.75, 0.75, size=(n, 2)), "scale": rng.uniform(0.2, 0.34, size=n),
            "angle": rng.uniform(-np.pi, np.pi, size=n)})
    occluder = {"on": rng.random(n) < difficulty.occlusion, "angle": rng.uniform(0, np.pi, size=n),
                "offset": rng.uniform(-0.35, 0.35, size=n), "width": rng.uniform(0.15, 0.3, size=n),
                "colour": rng.uniform(0.2, 0.8, size=(n, 1)) * np.ones((1, 3))}
    gain = (SPEAKER_GAIN[domain.slot] ** difficulty.domain_shift if domain is not None and domain.style == "speaker"
            else 1.0) * np.exp(rng.normal(0, 0.1 * q, size=n))
    noise = noise + 0.08 * q
    f32 = lambda a: None if a is None else np.asarray(a, dtype=np.float32)  # noqa: E731
    return _Scene(concept, f32(np.clip(colour, 0, 1)), f32(level), f32(aspect), f32(frequency), f32(contrast),
                  f32(centre), f32(scale), f32(angle), f32(background), f32(patch), distractors, occluder,
                  f32(gain), f32(noise))


def _render(scene: _Scene, size: int, rng: np.random.Generator, shift: np.ndarray | None = None,
            spin: float = 0.0, as_height: bool = False) -> np.ndarray:
    """One frame of ``scene``: ``[n, size, size, 3]`` RGB in [0, 1] (or ``[n, size, size]`` heights)."""
    n = len(scene.centre)
    x, y = _grid(size)
    centre = scene.centre if shift is None else scene.centre * 0.5 + shift
    if as_height:
        image = np.full((n, size, size), 0.1, dtype=np.float32)
    else:
        image = scene.background.copy()
        if scene.patch is not None:  # the speaker: head and shoulders at the lower left
            body = ((x[None] + 0.75) ** 2 / 0.35**2 + (y[None] + 1.0) ** 2 / 0.45**2 < 1) | \
                   ((x[None] + 0.75) ** 2 + (y[None] + 0.35) ** 2 < 0.2**2)
            image = np.where(body[..., None], scene.patch[:, None, None, :], image)
    for item in scene.distractors:
        u, v = _frame_uv(x, y, item["centre"], item["scale"], item["angle"])
        mask = _masks(item["shape"], u, v)
        pattern = _patterns(item["texture"], u, v, np.full(n, 2.2, np.float32))
        if as_height:
            image = np.where(mask > 0, 0.1 + item["level"][:, None, None] + 0.18 * pattern, image)
        else:
            shade = (0.4 + 0.6 * pattern)[..., None] * item["colour"][:, None, None, :]
            image = mask[..., None] * shade + (1 - mask[..., None]) * image
    u, v = _frame_uv(x, y, centre, scene.scale, scene.angle + spin, scene.aspect)
    mask = _shape_mask(scene.concept.shape, u, v).astype(np.float32)
    pattern = _texture(scene.concept.texture, u, v, scene.frequency[:, None, None])
    occluded = scene.occluder["on"][:, None, None] & (
        np.abs(np.cos(scene.occluder["angle"])[:, None, None] * x[None]
               + np.sin(scene.occluder["angle"])[:, None, None] * y[None]
               - scene.occluder["offset"][:, None, None]) < scene.occluder["width"][:, None, None])
    if as_height:
        image = np.where(mask > 0, 0.1 + scene.level[:, None, None] + 0.18 * pattern, image)
        image = np.where(occluded, 0.1 + 0.5 * scene.occluder["colour"][:, :1, None], image)
        image = np.where((y > 0.8)[None], np.float32(DEPTH_WALL_HEIGHT), image)  # the back wall
        tilt = rng.uniform(-0.08, 0.08, size=(n, 2)).astype(np.float32)
        image = image + tilt[:, 0, None, None] * x + tilt[:, 1, None, None] * y
        return image + rng.normal(0, 1, size=image.shape).astype(np.float32) * 0.5 * scene.noise[:, None, None]
    shade = ((1 - scene.contrast)[:, None, None] + scene.contrast[:, None, None] * pattern)[..., None] \
        * scene.colour[:, None, None, :]
    image = mask[..., None] * shade + (1 - mask[..., None]) * image
    image = np.where(occluded[..., None], scene.occluder["colour"][:, None, None, :], image)
    image = image * scene.gain[:, None, None, None]
    image = image + rng.normal(0, 1, size=image.shape).astype(np.float32) * scene.noise[:, None, None, None]
    return np.clip(image, 0, 1).astype(np.float32)


def render_images(concept: Concept, n: int, size: int, domain: DomainStyle, rng: np.random.Generator,
                  difficulty: Difficulty = CLEAN) -> np.ndarray:
    """``[n, size, size, 3]`` float images in [0, 1]."""
    return _render(_scene(concept, n, size, difficulty, domain, rng), size, rng)


def render_pretraining_images(concept: Concept, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pre-training images: clean class cues on a random mixture of the domain backgrounds."""
    return _render(_scene(concept, n, size, CLEAN, None, rng), size, rng)


def render_videos(concept: Concept, n: int, size: int, frames: int, domain: DomainStyle,
                  rng: np.random.Generator, difficulty: Difficulty = CLEAN) -> np.ndarray:
    """``[n, frames, size, size, 3]``: the object moves along a concept-specific path and spins."""
    scene = _scene(concept, n, size, difficulty, domain, rng)
    path = 2 * np.pi * ((concept.shape + 3 * concept.colour + 5 * concept.texture) % 8) / 8
    path = path + rng.normal(0, 0.5 * difficulty.cue_jitter, size=(n, 1))
    direction = np.concatenate([np.cos(path), np.sin(path)], axis=1).astype(np.float32)
    speed = 0.5 * domain.speed * np.exp(rng.normal(0, 0.2 * difficulty.cue_jitter, size=(n, 1))).astype(np.float32)
    spin = (concept.texture - 1.5) * 0.5
    steps = (np.arange(frames, dtype=np.float32) + 0.5) / frames - 0.5
    clips = [_render(scene, size, rng, shift=speed * step * direction, spin=spin * step * 2) for step in steps]
    return np.stack(clips, axis=1)


def render_depth(concept: Concept, n: int, size: int, domain: DomainStyle, rng: np.random.Generator,
                 difficulty: Difficulty = CLEAN) -> np.ndarray:
    """``[n, size, size]`` height maps (arbitrary units)."""
    return _render(_scene(concept, n, size, difficulty, domain, rng), size, rng, as_height=True)


# ----------------------------------------------------------------------------------- 1-D signals
HARMONICS = (
    ((1.0, 1.0),),
    ((1.0, 1.0), (3.0, 0.45), (5.0, 0.25)),
    ((1.0, 1.0), (2.0, 0.6), (3.0, 0.4), (4.0, 0.3)),
    ((1.0, 1.0), (2.76, 0.7), (5.4, 0.35)),
)


def _gaps(wave: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Silence a random stretch (15-30 % of the length) of each signal with ``probability``."""
    n, length = wave.shape[0], wave.shape[-1]
    on = rng.random(n) < probability
    start = rng.uniform(0, 0.7, size=n)
    width = rng.uniform(0.15, 0.3, size=n)
    t = np.linspace(0, 1, length, dtype=np.float32)
    keep = ~(on[:, None] & (t[None] >= start[:, None]) & (t[None] < (start + width)[:, None]))
    return wave * (keep[:, None, :] if wave.ndim == 3 else keep)


def _tone(f0: np.ndarray, texture: np.ndarray, t: np.ndarray, sample_rate: int, rng: np.random.Generator,
          amplitude_jitter: float = 0.0) -> np.ndarray:
    wave = np.zeros((len(f0), len(t)), dtype=np.float32)
    for k in np.unique(texture):
        pick = texture == k
        for multiple, amplitude in HARMONICS[int(k)]:
            weight = amplitude * np.clip(1 + rng.normal(0, amplitude_jitter, size=(pick.sum(), 1)), 0, None)
            frequency = np.minimum(f0[pick] * multiple, sample_rate * 0.45)
            wave[pick] += weight * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi, size=(pick.sum(), 1)))
    return wave


def synthesize_audio(concept: Concept, n: int, sample_rate: int, duration: float, domain: DomainStyle,
                     rng: np.random.Generator, difficulty: Difficulty = CLEAN) -> np.ndarray:
    """``[n, samples]`` waveforms: pitch from shape, harmonics from texture, AM rate from colour.

    A "speaker" domain adds its voice formant and room reverberation; a "conflicting" one shifts the pitch.
    """
    j, q = difficulty.cue_jitter, difficulty.nuisance
    t = np.arange(int(sample_rate * duration), dtype=np.float32) / sample_rate
    semitones = rng.normal(0, 1.5 * j, size=(n, 1))  # neighbouring shapes are 3.6 semitones apart
    f0 = 170.0 * 2 ** (concept.shape * 0.3) * domain.pitch_factor * 2 ** (semitones / 12) * rng.uniform(0.98, 1.02, size=(n, 1))
    wave = _tone(f0, np.full(n, concept.texture), t, sample_rate, rng, 0.4 * j)
    am_rate = 2.0 + 2.0 * concept.colour + rng.normal(0, 0.8 * j, size=(n, 1))
    depth = 0.8 * rng.uniform(max(0.3, 1 - 0.5 * j), 1.0, size=(n, 1))
    envelope = 1 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * am_rate * t + rng.uniform(0, 2 * np.pi, size=(n, 1))))
    wave = wave * envelope * rng.uniform(0.3, 0.6, size=(n, 1))
    for _ in range(difficulty.distractors):  # another sound source: a tone of random pitch and timbre
        other = 170.0 * 2 ** rng.uniform(0, 2.1, size=(n, 1))
        wave = wave + _tone(other, rng.integers(0, 4, size=n), t, sample_rate, rng) * rng.uniform(0.1, 0.3, size=(n, 1))
    shift = difficulty.domain_shift
    if domain.style == "speaker" and domain.slot > 0 and shift > 0:
        spectrum = np.fft.rfft(wave, axis=1)
        frequencies = np.fft.rfftfreq(len(t), 1 / sample_rate)
        formant = 1 + shift * np.exp(-0.5 * ((frequencies - SPEAKER_FORMANT_HZ[domain.slot]) / 250.0) ** 2)
        wave = np.fft.irfft(spectrum * formant, n=len(t), axis=1)
        decay = SPEAKER_REVERB_S[domain.slot] * shift
        response = np.exp(-t / decay) * rng.normal(0, 1, size=len(t)) * 0.3
        response[0] = 1.0
        wave = np.fft.irfft(np.fft.rfft(wave, axis=1) * np.fft.rfft(response), n=len(t), axis=1)
        wave = wave / np.abs(wave).max(axis=1, keepdims=True) * 0.45
    gain = (SPEAKER_GAIN[domain.slot] ** shift if domain.style == "speaker" else 1.0) \
        * np.exp(rng.normal(0, 0.2 * q, size=(n, 1)))
    wave = _gaps(wave * gain, difficulty.occlusion, rng)
    noise_level = 0.02 + 0.02 * domain.slot * shift + 0.06 * q
    return (wave + rng.normal(0, noise_level, size=wave.shape)).astype(np.float32)


def _axis_mix(index: int) -> np.ndarray:
    angle_a, angle_b = 2 * np.pi * index / 8, np.pi * (index % 3 + 1) / 4
    return np.array([np.cos(angle_a) * np.sin(angle_b), np.sin(angle_a) * np.sin(angle_b), np.cos(angle_b)],
                    dtype=np.float32)


def synthesize_inertial(concept: Concept, n: int, sample_rate: int, duration: float, sensor: str,
                        domain: DomainStyle, rng: np.random.Generator, difficulty: Difficulty = CLEAN) -> np.ndarray:
    """``[n, 3, samples]`` accelerometer (``sensor='acc'``, m/s^2) or gyroscope (``'gyro'``, rad/s)."""
    j, q = difficulty.cue_jitter, difficulty.nuisance
    t = np.arange(int(sample_rate * duration), dtype=np.float32) / sample_rate
    if sensor == "acc":
        frequency, axes, amplitude = 2.0 + INERTIAL_STEP_HZ["acc"] * concept.texture, _axis_mix(concept.shape), 2.0
        offset = np.array([0.0, 0.0, 9.81], dtype=np.float32)
    elif sensor == "gyro":
        frequency = 1.5 + INERTIAL_STEP_HZ["gyro"] * concept.colour
        axes, amplitude = _axis_mix(concept.colour + concept.shape), 1.2
        offset = np.zeros(3, dtype=np.float32)
    else:
        raise ValueError(f"unknown inertial sensor {sensor!r}")
    frequency = frequency * domain.speed * rng.uniform(0.97, 1.03, size=(n, 1, 1)) \
        * np.exp(rng.normal(0, 0.1 * j, size=(n, 1, 1)))
    if difficulty.inertial_jitter > 0:  # drawn only when set: at 0 the generator's stream is v5's
        spread = 0.45 * INERTIAL_STEP_HZ[sensor] * difficulty.inertial_jitter
        frequency = np.abs(frequency + rng.normal(0, spread, size=(n, 1, 1)))
    frequency = np.minimum(frequency, sample_rate * 0.45)
    axes = axes[None] + rng.normal(0, 0.25 * j, size=(n, 3))
    axes = (axes / np.linalg.norm(axes, axis=1, keepdims=True))[:, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    wave = np.sin(2 * np.pi * frequency * t[None, None] + phase)
    second = 0.35 * np.sin(2 * np.pi * np.minimum(2 * frequency, sample_rate * 0.45) * t[None, None] + 2 * phase)
    signal = amplitude * (wave + second) * axes
    for _ in range(difficulty.distractors):  # another movement of random frequency and axis
        other_axes = rng.normal(0, 1, size=(n, 3, 1))
        other_axes /= np.linalg.norm(other_axes, axis=1, keepdims=True)
        other = np.sin(2 * np.pi * rng.uniform(1.0, 12.0, size=(n, 1, 1)) * t[None, None] + rng.uniform(0, 6.3, size=(n, 1, 1)))
        signal = signal + amplitude * rng.uniform(0.2, 0.5, size=(n, 1, 1)) * other * other_axes
    gain = (SPEAKER_GAIN[domain.slot] ** difficulty.domain_shift if domain.style == "speaker" else 1.0) \
        * np.exp(rng.normal(0, 0.2 * q, size=(n, 1, 1)))
    signal = _gaps(signal * gain, difficulty.occlusion, rng) + offset[None, :, None]
    noise_level = 0.15 + 0.1 * domain.slot * difficulty.domain_shift + 0.35 * q
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
    """English captions for pre-training. A caption names the colour and/or the shape of a concept,
    or its texture alone, never a texture together with a colour or a shape: every attribute is
    captioned, but no caption names a continual class's combination, and the pair-mates of a
    continual (colour, shape) pair share every caption that names their colour or shape."""
    colour, texture, shape = COLOURS[concept.colour], TEXTURES[concept.texture], SHAPES[concept.shape]
    forms = (
        f"a photo of a {colour} {shape}.", f"a {colour} {shape}.", f"a photo of a {shape}.",
        f"a {colour} object.", f"something {colour}.", f"a {texture} pattern.", f"something {texture}.",
    )
    weights = np.array([4, 3, 2, 1, 1, 2, 1], dtype=np.float64)
    picks = rng.choice(len(forms), size=n, p=weights / weights.sum())
    return [forms[i] for i in picks]


def chunk_rng(seed: int, concept: Concept, domain_index: int, split: int, stream: str) -> np.random.Generator:
    """An independent generator for one (concept, domain, split, modality) chunk."""
    sequence = np.random.SeedSequence([seed, concept.index, domain_index, split, MODALITY_STREAM_KEYS[stream]])
    return np.random.default_rng(sequence)
