"""Scenes for the synthetic benchmark: a background (procedural or a shipped photograph) with a few
shaded, shadowed, antialiased objects on it and a sensor-noise field. A scene keeps its parts, so
an edit can re-render it with one object changed and get exactly the pixels a real object change
would touch."""
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
from PIL import Image

# name -> (file in scikit-image's data folder, licence as its docstring states it)
PHOTOS = {
    "astronaut": ("astronaut.png", "public domain (NASA Great Images)"),
    "camera": ("camera.png", "CC0 (Lav Varshney)"),
    "chelsea": ("chelsea.png", "CC0 (Stefan van der Walt)"),
    "coffee": ("coffee.png", "CC0 (Rachel Michetti)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "public domain (NASA)"),
    "rocket": ("rocket.jpg", "public domain (SpaceX)"),
}
TEXTURES = {
    "brick": ("brick.png", "CC0 (CC0Textures Bricks25)"),
    "grass": ("grass.png", "CC0 (CC0Textures)"),
    "gravel": ("gravel.png", "CC0 (CC0Textures Gravel04)"),
}

COLOURS = {
    "red": (215, 40, 40), "green": (45, 165, 60), "blue": (40, 75, 215), "yellow": (240, 210, 40),
    "orange": (245, 135, 25), "purple": (135, 55, 185), "pink": (240, 130, 180),
    "white": (242, 242, 242), "black": (28, 28, 28), "brown": (125, 78, 38),
    "cyan": (40, 200, 215), "gray": (128, 128, 128),
}
SHAPES = ("ball", "circle", "square", "rectangle", "triangle", "star", "hexagon", "ellipse", "ring",
          "heart", "cross", "diamond", "crescent")
SUPERSAMPLE = 4
MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the background under it


@functools.lru_cache(maxsize=1)
def _skimage_data_dir():
    # read the files directly: importing skimage.data may try to download the ones not shipped
    spec = importlib.util.find_spec("skimage")
    return None if spec is None or spec.origin is None else os.path.join(os.path.dirname(spec.origin), "data")


def _available(table):
    folder = _skimage_data_dir()
    if folder is None:
        return ()
    return tuple(name for name, (file, _) in table.items() if os.path.isfile(os.path.join(folder, file)))


def available_photos():
    """Names of the shipped photographs found on this machine (empty without scikit-image)."""
    return _available(PHOTOS)


def available_textures():
    return _available(TEXTURES)


@functools.cache
def _load(file, mode):
    return np.asarray(Image.open(os.path.join(_skimage_data_dir(), file)).convert(mode))


@dataclass
class SceneObject:
    shape: str
    colour: str
    rgb: np.ndarray          # float32 (3,), the colour name's RGB with a little jitter
    center: tuple            # (y, x) in pixels
    radius: float
    angle: float
    size: int                # image side, so the rasters can be cached on the object
    feather: float           # Gaussian sigma of the soft edge, in pixels
    light: np.ndarray        # unit (y, x) direction the light travels in
    shadow_offset: tuple
    shadow_strength: float   # 0 = no shadow
    pattern: Optional[str] = None
    pattern_rgb: Optional[np.ndarray] = None
    brightness: float = 1.0
    # rasters depend on the fields above: init=False so dataclasses.replace starts a fresh cache
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def alpha(self):
        """float32 (H, W) coverage in [0, 1]."""
        if "alpha" not in self._cache:
            self._cache["alpha"] = _rasterise(self)
        return self._cache["alpha"]

    @property
    def shadow(self):
        """float32 (H, W) shadow coverage in [0, 1] (all zero when the object casts none)."""
        if "shadow" not in self._cache:
            self._cache["shadow"] = _shadow(self)
        return self._cache["shadow"]

    def footprint(self, threshold):
        """Pixels where the object or its shadow covers more than `threshold`."""
        return (self.alpha > threshold) | (self.shadow > threshold)


@dataclass
class Scene:
    background: np.ndarray   # float32 (H, W, 3) in [0, 255]
    noise: np.ndarray        # float32 (H, W, 3), added to every surface
    objects: list
    kind: str                # "procedural" or "photo:<name>"


# ---- shapes ---------------------------------------------------------------------------------


def _polygon(count, radii=(1.0,), start=0.0):
    angles = start + np.arange(count) * 2 * np.pi / count
    r = np.resize(np.asarray(radii, dtype=np.float64), count)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _heart():
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    return (points - points.mean(0)) / 17.0


def _cross():
    a, b = 1.0, 0.34
    return np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                     (-b, b), (-a, b), (-a, -b), (-b, -b)])


def shape_parts(shape):
    """Unit-radius outline(s) as [(points (N, 2) as (x, y), fill value)], drawn in order."""
    circle = _polygon(96)
    if shape in ("ball", "circle"):
        return [(circle, 1)]
    if shape == "square":
        return [(_polygon(4, start=np.pi / 4), 1)]
    if shape == "rectangle":
        return [(_polygon(4, start=np.pi / 4) * (1.0, 0.55), 1)]
    if shape == "triangle":
        return [(_polygon(3, start=-np.pi / 2), 1)]
    if shape == "star":
        return [(_polygon(10, radii=(1.0, 0.45), start=-np.pi / 2), 1)]
    if shape == "hexagon":
        return [(_polygon(6), 1)]
    if shape == "ellipse":
        return [(circle * (1.0, 0.62), 1)]
    if shape == "ring":
        return [(circle, 1), (circle * 0.55, 0)]
    if shape == "heart":
        return [(_heart(), 1)]
    if shape == "cross":
        return [(_cross(), 1)]
    if shape == "diamond":
        return [(_polygon(4) * (0.62, 1.0), 1)]
    if shape == "crescent":
        return [(circle, 1), (circle * 0.85 + (0.45, -0.1), 0)]
    raise ValueError(f"unknown shape {shape!r}")


def _rasterise(obj):
    # supersampled fill, area-averaged down: antialiased edges for any outline
    big = obj.size * SUPERSAMPLE
    canvas = np.zeros((big, big), np.uint8)
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    cy, cx = obj.center
    for points, value in shape_parts(obj.shape):
        xy = points @ rotation.T * obj.radius + (cx, cy)
        cv2.fillPoly(canvas, [np.round(xy * SUPERSAMPLE * 16).astype(np.int32)], 255 * value,
                     lineType=cv2.LINE_8, shift=4)
    alpha = cv2.resize(canvas, (obj.size, obj.size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if obj.feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), obj.feather)
    return alpha


def _shadow(obj):
    if obj.shadow_strength <= 0:
        return np.zeros((obj.size, obj.size), np.float32)
    dy, dx = obj.shadow_offset
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(obj.alpha, shift, (obj.size, obj.size), flags=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(moved, (0, 0), 1.0 + 0.15 * obj.radius)


def _grid(size):
    return np.mgrid[0:size, 0:size].astype(np.float32)


def object_layer(obj):
    """float32 (H, W, 3): the object's shaded surface everywhere (used where its alpha is)."""
    yy, xx = _grid(obj.size)
    uy, ux = (yy - obj.center[0]) / obj.radius, (xx - obj.center[1]) / obj.radius
    ly, lx = obj.light
    if obj.shape == "ball":
        # a lit sphere: Lambert term plus a specular highlight
        nz = np.sqrt(np.clip(1 - uy * uy - ux * ux, 0, 1))
        lambert = np.clip(-(uy * ly + ux * lx) * 0.7 + nz * 0.7, 0, 1)
        shade = (0.3 + 0.85 * lambert)[..., None]
        highlight = (lambert ** 24 * 120)[..., None]
    else:
        shade = (0.92 - 0.18 * (uy * ly + ux * lx))[..., None]
        highlight = 0.0
    surface = obj.rgb * obj.brightness
    if obj.pattern is not None:
        weight = pattern_weight(obj.pattern, uy, ux, obj.angle)[..., None]
        surface = surface * (1 - weight) + obj.pattern_rgb * weight
    return surface * shade + highlight


def pattern_weight(pattern, uy, ux, angle):
    """float32 (H, W) in [0, 1]: where the second colour of a pattern shows, in object units."""
    cos, sin = np.cos(angle), np.sin(angle)
    a, b = ux * cos + uy * sin, -ux * sin + uy * cos
    if pattern == "striped":
        return (np.sin(a * 2.5 * np.pi) > 0).astype(np.float32)
    if pattern == "checkered":
        return ((np.sin(a * 2 * np.pi) > 0) ^ (np.sin(b * 2 * np.pi) > 0)).astype(np.float32)
    if pattern == "polka-dotted":
        fa, fb = a * 2.2 - np.round(a * 2.2), b * 2.2 - np.round(b * 2.2)
        return (fa * fa + fb * fb < 0.09).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}")


def composite(image, obj, noise):
    """Draws `obj` (shadow, then surface plus the scene's noise) over float32 `image`."""
    image = image * (1 - obj.shadow_strength * obj.shadow[..., None])
    alpha = obj.alpha[..., None]
    return image * (1 - alpha) + (object_layer(obj) + noise) * alpha


def compose(scene):
    image = scene.background + scene.noise
    for obj in scene.objects:
        image = composite(image, obj, scene.noise)
    return to_uint8(image)


def to_uint8(image):
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ---- backgrounds ----------------------------------------------------------------------------


def random_colour(rng, saturation=(20, 200), value=(60, 240)):
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(*saturation), rng.uniform(*value)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _ramp(t, rng):
    t = t[..., None]
    return random_colour(rng) * (1 - t) + random_colour(rng) * t


def _value_noise(rng, size, octaves=4):
    # smooth random field in [0, 1]: octaves of bicubically upsampled random grids
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        cells = 3 * 2 ** octave
        grid = rng.random((cells, cells)).astype(np.float32)
        total += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / 2 ** octave
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def _linear(rng, size):
    yy, xx = _grid(size) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = yy * np.sin(angle) + xx * np.cos(angle)
    return _ramp((t - t.min()) / np.ptp(t), rng)


def _radial(rng, size):
    yy, xx = _grid(size) / size
    cy, cx = rng.uniform(0, 1, 2)
    t = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return _ramp(t / t.max(), rng)


def _clouds(rng, size):
    return _ramp(_value_noise(rng, size), rng)


def _stripes(rng, size):
    yy, xx = _grid(size)
    angle, period = rng.uniform(0, np.pi), rng.uniform(12, 48) * size / 256
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    if rng.random() < 0.5:
        wave = wave * np.sin((-xx * np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / period)
    t = cv2.GaussianBlur((wave > 0).astype(np.float32), (0, 0), 1.0) * rng.uniform(0.15, 0.5)
    return _ramp(t, rng)


def _horizon(rng, size):
    # sky gradient above, a noisy ground below
    yy, _ = _grid(size)
    line = rng.uniform(0.3, 0.7) * size
    sky = _ramp(np.clip(yy / line, 0, 1) ** 0.8, rng)
    ground = _ramp(_value_noise(rng, size), rng)
    weight = np.clip((yy - line) / 2 + 0.5, 0, 1)[..., None]
    return sky * (1 - weight) + ground * weight


def _texture(rng, size, names):
    name = str(rng.choice(names))
    gray = _load(TEXTURES[name][0], "L").astype(np.float32)
    crop = _random_crop(rng, gray, size)
    detail = 1 + (crop / max(float(crop.mean()), 1.0) - 1) * rng.uniform(0.4, 1.0)
    return random_colour(rng, value=(90, 220)) * detail[..., None]


def _random_crop(rng, image, size):
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = image[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def procedural_background(rng, size, textures=()):
    """float32 (H, W, 3); `textures`: names from TEXTURES that may be used."""
    makers = [_linear, _radial, _clouds, _stripes, _horizon]
    if textures:
        makers.append(functools.partial(_texture, names=textures))
    base = makers[rng.integers(len(makers))](rng, size)
    # a soft detail layer and uneven lighting keep flat regions from being perfectly flat
    detail = (_value_noise(rng, size, octaves=3) - 0.5) * rng.uniform(0, 40)
    yy, xx = _grid(size) / size
    light = 1 + rng.uniform(-0.15, 0.15) * (yy - 0.5) + rng.uniform(-0.15, 0.15) * (xx - 0.5)
    return np.clip(base * light[..., None] + detail[..., None], 0, 255).astype(np.float32)


def photo_background(rng, size, name):
    return _random_crop(rng, _load(PHOTOS[name][0], "RGB"), size)


# ---- objects --------------------------------------------------------------------------------


def free_spot(rng, size, objects, radius, tries=60):
    """A centre (y, x) for a new object of `radius` clear of `objects`, or None."""
    margin = radius + 0.04 * size
    if margin * 2 >= size:
        return None
    for _ in range(tries):
        center = tuple(rng.uniform(margin, size - margin, 2))
        if all(np.hypot(center[0] - o.center[0], center[1] - o.center[1]) > radius + o.radius + 0.05 * size
               for o in objects):
            return center
    return None


def contrasting_colour(rng, behind, exclude=()):
    """A random colour name far from the RGB `behind`, or the farthest one when none is far."""
    names = [name for name in COLOURS if name not in exclude]
    distance = {name: float(np.linalg.norm(np.subtract(COLOURS[name], behind))) for name in names}
    far = [name for name in names if distance[name] > MIN_CONTRAST]
    return str(rng.choice(far)) if far else max(names, key=distance.get)


def mean_under(image, center, radius):
    size = image.shape[0]
    y0, y1 = int(max(center[0] - radius, 0)), int(min(center[0] + radius + 1, size))
    x0, x1 = int(max(center[1] - radius, 0)), int(min(center[1] + radius + 1, size))
    return image[y0:y1, x0:x1].reshape(-1, 3).mean(0)


def new_object(rng, size, background, objects, shape=None, center=None, radius=None, exclude_colours=()):
    """A random object clear of `objects` (None when no room is left), contrasting with the
    background under it."""
    radius = radius if radius is not None else rng.uniform(0.07, 0.18) * size
    center = center if center is not None else free_spot(rng, size, objects, radius)
    if center is None:
        return None
    shape = shape if shape is not None else str(rng.choice(SHAPES))
    taken = {o.colour for o in objects if o.shape == shape}
    colour = contrasting_colour(rng, mean_under(background, center, radius), exclude=taken | set(exclude_colours))
    light_angle = rng.uniform(0, 2 * np.pi)
    casts = rng.random() < 0.6
    return SceneObject(
        shape=shape, colour=colour,
        rgb=np.clip(np.add(COLOURS[colour], rng.integers(-12, 13, 3)), 0, 255).astype(np.float32),
        center=center, radius=float(radius), angle=float(rng.uniform(0, 2 * np.pi)), size=size,
        feather=float(rng.uniform(0.3, 1.2)),
        light=np.array([np.sin(light_angle), np.cos(light_angle)], np.float32),
        shadow_offset=(float(np.sin(light_angle) * 0.15 * radius), float(np.cos(light_angle) * 0.15 * radius)),
        shadow_strength=float(rng.uniform(0.25, 0.45)) if casts else 0.0,
    )


def make_scene(rng, size, shipped, photo_prob):
    """A random scene: background, 1-4 objects, noise. `shipped`: use scikit-image's photographs
    (a `photo_prob` share of backgrounds) and textures when they are installed."""
    photos = available_photos() if shipped else ()
    if photos and rng.random() < photo_prob:
        name = str(rng.choice(photos))
        background, kind = photo_background(rng, size, name), f"photo:{name}"
    else:
        textures = available_textures() if shipped else ()
        background, kind = procedural_background(rng, size, textures), "procedural"
    objects = []
    for _ in range(rng.integers(1, 5)):
        obj = new_object(rng, size, background, objects)
        if obj is not None:
            objects.append(obj)
    noise = rng.normal(0, rng.uniform(0.5, 3.0), (size, size, 3)).astype(np.float32)
    return Scene(background, noise, objects, kind)
