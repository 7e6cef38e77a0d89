"""Ranking scanned frames for annotation: the peak-opacification filter,
the four strategies, and the rule that keeps frames of one cine apart.

Each strategy returns the chosen row indices into a `FrameScan`, with a
score and a reason per choice; `pick_apart` enforces the gap between frames
of one run for all of them.
"""

import numpy as np

from cm_unet_keras.data.filling_curve import near_peak

STRATEGIES = ("random", "peak", "typical", "uncertainty")
# Frames of one cine run closer than this are near duplicates (at 15 fps a
# third of a second): one of them is proposed at most.
MIN_FRAME_GAP = 5
# Neighbours a frame's typicality is measured against (TypiClust's 20).
TYPICALITY_NEIGHBOURS = 20


def runs_of(records):
    """`{image_path: [row, ...]}` of the multi-frame (cine) records, in frame order."""
    runs = {}
    for row, record in enumerate(records):
        if record.frame is not None:
            runs.setdefault(record.image_path, []).append(row)
    return {path: sorted(rows, key=lambda row: records[row].frame) for path, rows in runs.items()}


def peak_candidates(records, filling):
    """Boolean `[N]`: frames not before the contrast arrives or after it
    washes out. Single-frame files are all kept; each cine run keeps the
    frames its filling curve puts near peak opacification
    (`data.filling_curve.near_peak`, the rule `predict --video` shades)."""
    keep = np.ones(len(records), bool)
    for rows in runs_of(records).values():
        keep[rows] = near_peak(filling[rows])
    return keep


def is_apart(row, chosen, records, min_gap=MIN_FRAME_GAP):
    """Whether frame `row` may join `chosen`: not the same single-frame
    file, nor a frame of the same run fewer than `min_gap` frames away."""
    record = records[row]
    for other in (records[index] for index in chosen):
        if other.image_path != record.image_path:
            continue
        if record.frame is None or other.frame is None or abs(record.frame - other.frame) < min_gap:
            return False
    return True


def pick_apart(order, records, count, min_gap=MIN_FRAME_GAP):
    """The first `count` rows of `order` that are apart (`is_apart`)."""
    chosen = []
    for row in order:
        if is_apart(int(row), chosen, records, min_gap):
            chosen.append(int(row))
            if len(chosen) == count:
                break
    return chosen


def choose_random(candidates, records, count, seed, min_gap=MIN_FRAME_GAP):
    order = np.random.default_rng(seed).permutation(candidates)
    chosen = pick_apart(order, records, count, min_gap)
    return chosen, [float("nan")] * len(chosen), [f"random draw (seed {seed})"] * len(chosen)


def choose_ranked(candidates, values, records, count, what, min_gap=MIN_FRAME_GAP):
    """The candidates with the highest `values`, apart; `what` names the value."""
    order = candidates[np.argsort(-values[candidates], kind="stable")]
    chosen = pick_apart(order, records, count, min_gap)
    scores = [float(values[row]) for row in chosen]
    return chosen, scores, [f"highest {what} ({score:.4f}) among candidates" for score in scores]


def _embedding(features):
    """Features standardised per channel, then scaled to unit length."""
    features = np.asarray(features, np.float64)
    features = (features - features.mean(0)) / (features.std(0) + 1e-8)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)


def typicality(points):
    """TypiClust's typicality: 1 / mean distance to the nearest neighbours."""
    if len(points) == 1:
        return np.ones(1)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    neighbours = min(TYPICALITY_NEIGHBOURS, len(points) - 1)
    nearest = np.sort(distances, axis=1)[:, 1:neighbours + 1]
    return 1.0 / (nearest.mean(1) + 1e-12)


def choose_typical(candidates, features, records, count, seed, min_gap=MIN_FRAME_GAP):
    """TypiClust: k-means with `count` clusters on the encoder's embedding;
    from each cluster, largest first, its most typical frame (the next most
    typical where the gap rule refuses one)."""
    from sklearn.cluster import KMeans

    points = _embedding(features[candidates])
    clusters = min(count, len(candidates))
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(points)
    sizes = np.bincount(labels, minlength=clusters)
    chosen, scores, reasons = [], [], []
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(labels == cluster)
        typical = typicality(points[members])
        for member in members[np.argsort(-typical, kind="stable")]:
            if is_apart(int(candidates[member]), chosen, records, min_gap):
                chosen.append(int(candidates[member]))
                scores.append(float(typical[list(members).index(member)]))
                reasons.append(f"most typical frame of cluster {len(chosen)} of {clusters} ({sizes[cluster]} frames)")
                break
    return chosen, scores, reasons


def choose_coverage(candidates, features, records, count, min_gap=MIN_FRAME_GAP):
    """k-center greedy: the frame nearest the embedding's centre, then again
    and again the frame farthest from every frame chosen so far."""
    points = _embedding(features[candidates])
    start = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
    chosen, scores, reasons = [int(candidates[start])], [0.0], ["nearest the centre of the embedding"]
    nearest = np.linalg.norm(points - points[start], axis=1)
    while len(chosen) < count:
        for index in np.argsort(-nearest, kind="stable"):
            row = int(candidates[index])
            if nearest[index] <= 0 or row in chosen:
                return chosen, scores, reasons
            if is_apart(row, chosen, records, min_gap):
                break
        else:
            break
        chosen.append(row)
        scores.append(float(nearest[index]))
        reasons.append(f"farthest from the frames chosen before (distance {nearest[index]:.3f})")
        nearest = np.minimum(nearest, np.linalg.norm(points - points[index], axis=1))
    return chosen, scores, reasons
