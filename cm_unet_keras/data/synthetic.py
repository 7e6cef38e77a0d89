"""Synthetic X-ray coronary angiograms with exact vessel masks.

This is the package's embedded default dataset: the demo and the fast tests
run on it, so nobody needs a download to see the pipeline work end to end.

What it models:
    * Coronary trees: 2-3 trees entering across the border of the field of
      view, each a main vessel that tapers and gives off side branches over
      3-5 generations; each tree is one connected vessel mask. Daughter radii follow Murray's law
      (r_parent^3 = r_main^3 + r_side^3); radii run from about 6 px down to
      about 1 px at 256 px and scale with the image size.
    * Tortuous centrelines: the heading follows a random walk whose
      curvature is smoothed white noise, stronger in thin distal branches.
    * Projection physics: a contrast-filled vessel attenuates by
      exp(-mu * chord length), the chord through a cylinder of radius r at
      distance d from its axis being 2 * sqrt(r^2 - d^2). Thin vessels are
      therefore fainter than thick ones, as in a real angiogram.
    * Background: soft tissue texture (smooth noise at several scales), the
      heart shadow with a soft border, the brighter lung with its fine
      mottle and faint rib bands, a low-frequency illumination gradient and
      detector vignetting.
    * Acquisition: quantum noise whose variance follows the photon count
      (Gaussian approximation to Poisson), the unsharpness of focal spot and
      detector (slight blur), and optionally the circular collimator field
      of view with near-black outside, as in the CIMAT images.

What it does not model: the catheter, overlapping non-coronary structures
with sharp edges (sternal wires, stents, spine), cardiac and breathing
motion blur, contrast wash-in (all vessels are fully opacified), vessel
stenoses, foreshortening, and the vendor's image processing (edge
enhancement, log look-up tables). A model trained only on these images will
not be a clinical segmenter; the images exist to exercise the code.

The mask is exactly the drawn geometry: the centreline tree is a list of
`VesselSegment`s, the mask is the set of pixels within each segment's radius
of its centreline, and the image attenuation is computed from the same
distances, so mask and image agree pixel for pixel up to the blur.
"""

import math
import os
from typing import NamedTuple

import cv2
import numpy as np

# Every length below is given for a 256 px image and multiplied by
# size / 256, so that a 512 px angiogram shows the same anatomy, not a
# zoomed-out one.
_REFERENCE_SIZE = 256.0


class VesselSegment(NamedTuple):
    """One unbranched piece of vessel between two bifurcations.

    Args:
        centreline: float array (N, 2) of (x, y) points in pixels.
        radii: float array (N,) of the lumen radius at each point, pixels.
    """

    centreline: np.ndarray
    radii: np.ndarray


class _FieldOfView(NamedTuple):
    """Circular collimator opening: centre (x, y) and radius in pixels."""

    centre: tuple
    radius: float


class _Field:
    """Where vessels are drawn: the collimator circle, or the whole square.

    Args:
        size: image side in pixels.
        fov: _FieldOfView, or None for the square.
    """

    def __init__(self, size, fov):
        self.size = size
        self.fov = fov
        self.centre = np.array(fov.centre if fov else (size / 2.0, size / 2.0))
        self.radius = fov.radius if fov else size / 2.0

    def contains(self, x, y):
        """Bool array: which points (x, y arrays) lie in the field."""
        # Judged on the rounded pixel, which is what gets drawn: a point at
        # x = size - 0.4 would round off the canvas and break the vessel.
        last = self.size - 1
        in_square = (x >= 0) & (y >= 0) & (x <= last) & (y <= last)
        if self.fov is None:
            return in_square
        return in_square & (np.hypot(x - self.centre[0], y - self.centre[1]) < self.radius - 1.0)

    def reach(self, direction):
        """Distance from the centre to the field's edge along a unit vector."""
        half_widths = np.where(direction > 0, self.size - self.centre, self.centre)
        with np.errstate(divide="ignore"):
            to_square = float(np.min(half_widths / np.abs(direction)))
        return min(to_square, self.fov.radius) if self.fov else to_square

    def steer_inward(self, point, heading):
        """Turns a heading part-way towards the centre, the more so the
        nearer the edge, so that trees cross the picture as coronary
        arteries do instead of wandering straight back out of it."""
        offset = self.centre - point
        eccentricity = float(np.hypot(*offset)) / self.radius
        pull = 0.35 * min(max((eccentricity - 0.55) / 0.45, 0.0), 1.0)
        to_centre = math.atan2(offset[1], offset[0])
        turn = (to_centre - heading + math.pi) % (2.0 * math.pi) - math.pi
        return heading + pull * turn


def _as_generator(rng):
    """Accepts None, an int seed or a Generator; returns a Generator."""
    return np.random.default_rng(rng)


def _pick(value, draw):
    """The caller's value for a knob, or a random draw when it is None."""
    return draw() if value is None else value


def _smooth_curvature(rng, n_steps, strength, correlation_steps):
    """Curvature along a centreline, per pixel of arc length.

    White noise convolved with a Gaussian gives a curvature that changes
    gradually, so the vessel bends in arcs instead of zig-zagging.

    Args:
        rng: numpy Generator.
        n_steps: number of centreline steps.
        strength: standard deviation of the curvature, radians per pixel.
        correlation_steps: Gaussian width of the smoothing, in steps.

    Returns:
        float array (n_steps,).
    """
    half = int(3 * correlation_steps) + 1
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / correlation_steps) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))  # keeps the noise std at `strength`
    noise = rng.standard_normal(n_steps + 2 * half)
    return strength * np.convolve(noise, kernel, mode="valid")[:n_steps]


def _walk_centreline(rng, start, heading, radius_range, length, scale, field):
    """Walks one tortuous vessel segment from `start`.

    Args:
        rng: numpy Generator.
        start: (x, y) start point in pixels.
        heading: initial direction in radians.
        radius_range: (radius at start, radius at end) in pixels.
        length: arc length in pixels if the segment stays in the field.
        scale: image size / 256.
        field: _Field, the drawable region.

    Returns:
        (segment, end heading, whether the walk left the field), or
        (None, heading, True) if it left before two points.
    """
    step = 1.5 * scale
    n_steps = max(int(length / step), 2)
    # Long arcs follow the heart's surface; thin distal branches also
    # wiggle on a short scale, which the trunk does not.
    thinness = min(2.0 * scale / max(radius_range[1], 0.5 * scale), 2.0)
    curvature = _smooth_curvature(rng, n_steps, 0.012 / scale, correlation_steps=10.0)
    curvature += _smooth_curvature(rng, n_steps, 0.016 * thinness / scale, correlation_steps=2.5)
    headings = heading + np.cumsum(curvature * step)
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    points = np.vstack([start, start + np.cumsum(steps, axis=0)])
    first, stop, left_field = _span_in_field(points, field, lead_in=int(8.0 * scale / step))
    if stop - first < 2:
        return None, heading, True
    radii = np.linspace(radius_range[0], radius_range[1], n_steps + 1)
    segment = VesselSegment(points[first:stop], radii[first:stop])
    return segment, float(headings[stop - 2]), left_field


def _span_in_field(points, field, lead_in):
    """Which run of a walk to keep: up to where it leaves the field.

    The last `lead_in` points before the first inside one are kept too: a
    root placed outside the field then runs in across the border instead of
    starting with a blunt end inside it. Earlier outside points are dropped,
    so that a root walking along the border cannot graze the image with a
    sliver of vessel detached from the rest of its tree.

    Returns:
        (first index, stop index, whether the walk left the field).
    """
    is_inside = field.contains(points[:, 0], points[:, 1])
    if not is_inside.any():
        return 0, 0, True
    entered = int(np.argmax(is_inside))
    first = max(entered - lead_in, 0)
    outside_after = ~is_inside[entered:]
    if not outside_after.any():
        return first, len(points), False
    return first, entered + int(np.argmax(outside_after)), True


def grow_vessel_tree(
    rng, root, heading, root_radius, min_radius, max_generations, scale, field
):
    """Grows one coronary tree by repeated asymmetric bifurcation.

    Each segment ends in a bifurcation into a main continuation (same
    generation, slightly thinner, small turn) and a side branch (next
    generation, radius from Murray's law, wide turn). Growth stops at the
    field's edge, below `min_radius`, or past `max_generations`.

    Args:
        rng: numpy Generator.
        root: (x, y) where the vessel enters, pixels.
        heading: initial direction in radians.
        root_radius: lumen radius at the root, pixels.
        min_radius: thinnest vessel drawn, pixels.
        max_generations: number of branching generations (1 = no side
            branches).
        scale: image size / 256.
        field: _Field, the drawable region.

    Returns:
        list of VesselSegment.
    """
    segments = []
    pending = [(np.asarray(root, float), heading, root_radius, 1)]
    while pending and len(segments) < 120:  # a hard cap against rare bushy trees
        start, heading, radius, generation = pending.pop()
        end_radius = max(radius * rng.uniform(0.82, 0.95), min_radius)
        length = rng.uniform(18.0, 45.0) * scale
        segment, end_heading, left_field = _walk_centreline(
            rng, start, heading, (radius, end_radius), length, scale, field
        )
        if segment is None:
            continue
        segments.append(segment)
        if left_field or end_radius <= min_radius:
            continue
        end = segment.centreline[-1]
        main_radius = max(end_radius * rng.uniform(0.86, 0.97), min_radius)
        side_radius = max(end_radius**3 - main_radius**3, 0.0) ** (1.0 / 3.0)
        side = rng.choice((-1.0, 1.0))
        main_turn = -side * rng.uniform(0.05, 0.35)
        end_heading = field.steer_inward(end, end_heading)
        pending.append((end, end_heading + main_turn, main_radius, generation))
        # Not every bend carries a visible side branch.
        branches = rng.random() < 0.75
        if branches and generation < max_generations and side_radius >= min_radius:
            side_turn = side * rng.uniform(0.5, 1.2)
            pending.append((end, end_heading + side_turn, side_radius, generation + 1))
    return segments


def _tree_roots(rng, scale, n_trees, field):
    """Entry points just outside the field and headings into it.

    Args:
        rng: numpy Generator.
        scale: image size / 256.
        n_trees: number of roots.
        field: _Field.

    Returns:
        list of ((x, y), heading in radians).
    """
    first_angle = rng.uniform(0.0, 2.0 * math.pi)
    roots = []
    for index in range(n_trees):
        # Spread the roots round the border so the trees do not all overlap.
        angle = first_angle + 2.0 * math.pi * (index + rng.uniform(-0.2, 0.2)) / n_trees
        direction = np.array([math.cos(angle), math.sin(angle)])
        root = field.centre + direction * (field.reach(direction) + 8.0 * scale)
        heading = angle + math.pi + rng.uniform(-0.4, 0.4)
        roots.append((root, heading))
    return roots


def _centreline_pieces(segments):
    """All segments' centrelines as straight pieces between rounded points.

    Returns:
        (starts int list of (x, y), ends int list of (x, y), radii float
        array): one entry per piece, its radius the mean of its two ends.
    """
    starts, ends, radii = [], [], []
    for segment in segments:
        points = np.round(segment.centreline).astype(np.int64)
        starts += points[:-1].tolist()
        ends += points[1:].tolist()
        radii.append(0.5 * (segment.radii[:-1] + segment.radii[1:]))
    return starts, ends, np.concatenate(radii)


def _radius_bands(radii):
    """Band index of each radius: geometric bands, a factor 1.45 wide."""
    return np.floor(np.log(radii / radii.min()) / np.log(1.45)).astype(int)


def rasterise_vessels(segments, shape):
    """Rasterises vessel segments into a mask and a projected chord length.

    A pixel is vessel if its distance to a centreline is at most the radius
    there; its chord length is that of the cylinder, 2 * sqrt(r^2 - d^2),
    with r widened by half a pixel for the pixel's own footprint. Distances
    come from a distance transform that also reports the nearest centreline
    pixel, hence its radius. Pieces are split into radius bands and each
    band is transformed on its own: otherwise, at a bifurcation, the thin
    branch's centreline would be "nearest" inside the parent and carve a
    notch into it.

    Args:
        segments: list of VesselSegment.
        shape: (height, width) of the output.

    Returns:
        (vessel mask bool array, chord length float32 array in pixels).
    """
    vessel_mask = np.zeros(shape, bool)
    chord = np.zeros(shape, np.float32)
    if not segments:
        return vessel_mask, chord
    starts, ends, radii = _centreline_pieces(segments)
    bands = _radius_bands(radii)
    for band in np.unique(bands):
        radius_canvas = np.zeros(shape, np.float32)
        for k in np.flatnonzero(bands == band).tolist():
            cv2.line(radius_canvas, starts[k], ends[k], float(radii[k]), 1)
        on_centreline = radius_canvas > 0
        if not on_centreline.any():  # the whole band lies outside the image
            continue
        distance, label = cv2.distanceTransformWithLabels(
            (~on_centreline).astype(np.uint8), cv2.DIST_L2, 5,
            labelType=cv2.DIST_LABEL_PIXEL,
        )
        # Labels number the centreline pixels in raster order, from 1.
        radius_lut = np.concatenate([[0.0], radius_canvas[on_centreline]]).astype(np.float32)
        radius = radius_lut[label]
        vessel_mask |= distance <= radius
        band_chord = 2.0 * np.sqrt(np.maximum((radius + 0.5) ** 2 - distance**2, 0.0))
        np.maximum(chord, band_chord, out=chord)
    return vessel_mask, chord


def _smooth_noise(rng, size, grid):
    """Zero-mean, unit-ish noise, smooth at a scale of size / grid pixels."""
    coarse = rng.standard_normal((grid + 3, grid + 3)).astype(np.float32)
    # Upsample past the border and crop, so the field does not pin to edges.
    cell = size / grid
    big = cv2.resize(coarse, (int(cell * (grid + 3)),) * 2, interpolation=cv2.INTER_CUBIC)
    offset = int(cell)
    return big[offset : offset + size, offset : offset + size]


def _pixel_coordinates(size, unit=1.0):
    """(y column, x row) of pixel centres in `unit`s; they broadcast to (size, size)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(unit)
    return centres[:, None], centres[None, :]


def _background_density(rng, size):
    """Optical density of the patient without contrast (log attenuation).

    Args:
        rng: numpy Generator.
        size: image side in pixels.

    Returns:
        float32 array (size, size); higher means darker.
    """
    y, x = _pixel_coordinates(size, unit=size)
    density = np.zeros((size, size), np.float32)
    for grid, amplitude in ((3, 0.10), (6, 0.04), (12, 0.02), (24, 0.012), (64, 0.012)):
        density += amplitude * rng.uniform(0.6, 1.4) * _smooth_noise(rng, size, grid)
    # Heart shadow: a large disc, mostly off-centre, denser than the lung.
    angle = rng.uniform(0.0, 2.0 * math.pi)
    heart_x, heart_y = 0.5 + 0.45 * math.cos(angle), 0.5 + 0.45 * math.sin(angle)
    heart_radius = rng.uniform(0.55, 0.85)
    edge = (heart_radius - np.hypot(x - heart_x, y - heart_y)) / rng.uniform(0.015, 0.06)
    in_heart = 1.0 / (1.0 + np.exp(-edge))
    density += rng.uniform(0.3, 0.9) * in_heart
    # Over the lung: the mottle of lung vessels and broad, curved rib bands.
    in_lung = 1.0 - in_heart
    mottle = sum(w * _smooth_noise(rng, size, g) for g, w in ((30, 0.8), (80, 0.8), (160, 0.4)))
    density += rng.uniform(0.05, 0.10) * mottle * in_lung
    rib_angle = rng.uniform(-0.6, 0.6)
    across = x * math.sin(rib_angle) + y * math.cos(rib_angle)
    along = x * math.cos(rib_angle) - y * math.sin(rib_angle)
    phase = 2.0 * math.pi * (across + 0.6 * (along - 0.5) ** 2) / rng.uniform(0.16, 0.24)
    density += rng.uniform(0.04, 0.10) * (0.5 + 0.5 * np.cos(phase)) ** 2 * in_lung
    return density


def _illumination(rng, size):
    """Relative beam intensity: a tilt plus vignetting towards the corners."""
    y, x = _pixel_coordinates(size, unit=size)
    y, x = y - 0.5, x - 0.5
    tilt_x, tilt_y = rng.normal(0.0, 0.25, size=2).tolist()
    vignetting = rng.uniform(0.3, 0.8)
    # Separable, so two exponentials of a line each instead of a square's.
    return np.exp(tilt_y * y - vignetting * y**2) * np.exp(tilt_x * x - vignetting * x**2)


def _field_of_view(rng, size):
    """A collimator circle that cuts the corners, as in the CIMAT images."""
    centre = tuple((size / 2.0 + rng.uniform(-0.03, 0.03, size=2) * size).tolist())
    return _FieldOfView(centre, rng.uniform(0.52, 0.60) * size)


def _field_weight(fov, size, scale):
    """1 inside the field, 0 outside, a couple of pixels of soft edge."""
    y, x = _pixel_coordinates(size)
    distance = np.hypot(x - fov.centre[0], y - fov.centre[1])
    return np.clip((fov.radius - distance) / (2.0 * scale) + 0.5, 0.0, 1.0)


def _expose(rng, transmission, photons):
    """Quantum noise: detected counts have variance equal to their mean.

    Args:
        rng: numpy Generator.
        transmission: float32 array, fraction of the beam reaching each pixel.
        photons: mean photon count per pixel at full transmission.

    Returns:
        float32 array, the noisy transmission.
    """
    counts = transmission * photons
    # The Gaussian approximation to Poisson is accurate at these counts and
    # several times faster than drawing Poisson variates.
    noise = rng.standard_normal(counts.shape, dtype=np.float32)
    return (counts + np.sqrt(counts) * noise) / photons


def _vessel_geometry(rng, scale, field, n_trees, max_generations, root_radius, min_radius):
    """Grows all trees; returns the list of VesselSegment."""
    segments = []
    for index, (root, heading) in enumerate(_tree_roots(rng, scale, n_trees, field)):
        # The first tree is the main artery; the others are smaller.
        radius = root_radius * (1.0 if index == 0 else rng.uniform(0.6, 0.85))
        generations = _pick(max_generations, lambda: int(rng.integers(3, 6)))
        segments += grow_vessel_tree(
            rng, root, heading, radius, min_radius, generations, scale, field
        )
    return segments


def generate_angiogram(
    size=256,
    rng=None,
    circular_fov=True,
    *,
    n_trees=None,
    max_generations=None,
    root_radius=None,
    min_radius=None,
    contrast=None,
    photons=None,
    mean_grey=None,
):
    """Generates one synthetic coronary angiogram and its vessel mask.

    Every knob left at None is drawn at random from a realistic range.

    Args:
        size: side of the square image in pixels.
        rng: numpy Generator, int seed, or None for fresh entropy.
        circular_fov: black out everything outside a collimator circle.
        n_trees: number of vessel trees (default 2 or 3).
        max_generations: branching generations per tree (default 3 to 5).
        root_radius: lumen radius where the main artery enters, pixels
            (default 4.5 to 6 px scaled by size / 256).
        min_radius: thinnest vessel, pixels (default 1 px scaled).
        contrast: iodine attenuation per pixel of chord at 256 px
            (default 0.055 to 0.09; higher means darker vessels).
        photons: mean photon count per pixel at full transmission
            (default 500 to 1500; lower means grainier).
        mean_grey: mean grey level inside the field (default 85 to 130).

    Returns:
        (angiogram, vessel_mask): uint8 arrays (size, size); the mask holds
        0 for background and 255 for vessel.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = _as_generator(rng)
    scale = size / _REFERENCE_SIZE
    fov = _field_of_view(rng, size) if circular_fov else None
    segments = _vessel_geometry(
        rng, scale, _Field(size, fov),
        _pick(n_trees, lambda: int(rng.integers(2, 4))),
        max_generations,
        _pick(root_radius, lambda: rng.uniform(4.5, 6.0) * scale),
        # Below ~0.7 px a vessel would vanish into the pixel grid.
        _pick(min_radius, lambda: max(1.0 * scale, 0.7)),
    )
    vessel_mask, chord = rasterise_vessels(segments, (size, size))
    # Focal spot unsharpness softens the vessel edges.
    chord = cv2.GaussianBlur(chord, (0, 0), 0.4 * scale)
    mu = _pick(contrast, lambda: rng.uniform(0.055, 0.09)) / scale
    density = _background_density(rng, size) + mu * chord
    transmission = _illumination(rng, size) * np.exp(-density)
    detected = _expose(rng, transmission, _pick(photons, lambda: rng.uniform(500.0, 1500.0)))
    # The detector's point spread correlates the grain over about a pixel,
    # whatever the image size.
    detected = cv2.GaussianBlur(detected, (0, 0), 0.6)
    return _to_display(rng, detected, vessel_mask, fov, size, scale, mean_grey)


def _to_display(rng, detected, vessel_mask, fov, size, scale, mean_grey):
    """Scales to 8-bit grey and applies the collimator; returns (image, mask)."""
    weight = _field_weight(fov, size, scale) if fov else np.ones_like(detected)
    in_field = weight > 0.5
    target = _pick(mean_grey, lambda: rng.uniform(85.0, 130.0))
    grey = detected * (target / float(detected[in_field].mean()))
    if fov is not None:
        # Behind the collimator blades a little scatter still arrives.
        outside = rng.uniform(4.0, 16.0) + rng.normal(0.0, 1.5, detected.shape)
        grey = weight * grey + (1.0 - weight) * outside
        vessel_mask &= in_field
    angiogram = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return angiogram, vessel_mask.astype(np.uint8) * 255


def write_synthetic_dataset(out_dir, count, size=256, seed=0, circular_fov=True):
    """Writes `count` angiograms and masks in the package's folder layout.

    Files are `out_dir/images/synth_0000.png` and `out_dir/masks/synth_0000.png`
    (same name in both). Sample i is generated from the seed sequence
    (seed, i) alone, so a larger count extends a smaller one.

    Args:
        out_dir: folder to create or fill.
        count: number of samples.
        size: image side in pixels.
        seed: dataset seed.
        circular_fov: black out outside a collimator circle.

    Returns:
        list of the written image paths, in sample order.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    image_dir = os.path.join(out_dir, "images")
    mask_dir = os.path.join(out_dir, "masks")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    image_paths = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        angiogram, vessel_mask = generate_angiogram(size, rng, circular_fov)
        name = f"synth_{index:04d}.png"
        image_path = os.path.join(image_dir, name)
        for path, array in ((image_path, angiogram), (os.path.join(mask_dir, name), vessel_mask)):
            if not cv2.imwrite(path, array):
                raise OSError(f"{path}: could not write PNG")
        image_paths.append(image_path)
    return image_paths
