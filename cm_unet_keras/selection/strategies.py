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
# Distances held at once while finding neighbours (8 bytes each: 64 MB).
NEIGHBOUR_CHUNK = 2 ** 23
# Points whose distances bound each point's nearest neighbours before the
# exact search (`nearest_distances`).
SAMPLE_FOR_BOUND = 1024


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


def nearest_distances(points, neighbours, chunk_elements=NEIGHBOUR_CHUNK):
    """`[N, neighbours]`: each point's distances to its nearest other points,
    nearest first.

    Rows are measured a block at a time against every point, so memory is
    `chunk_elements` distances plus the points, never N x N: a lab's folder
    of 20,000 frames fits in megabytes.
    """
    points = np.asarray(points, np.float64)
    count = len(points)
    squared = np.einsum("ij,ij->i", points, points)
    rows = max(1, chunk_elements // max(count, 1))
    # The neighbours-th nearest among every step-th point bounds the true one
    # from above: only distances under the bound are sorted, not whole rows.
    sample = np.arange(0, count, max(1, count // max(SAMPLE_FOR_BOUND, neighbours + 1)))
    nearest = np.empty((count, neighbours))
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in place, clipped at 0 against rounding.
        block = points[start:stop] @ points.T
        block *= -2.0
        block += squared[start:stop, None]
        block += squared[None]
        np.maximum(block, 0.0, out=block)
        block[np.arange(stop - start), np.arange(start, stop)] = np.inf  # a point is not its own neighbour
        bound = np.partition(block[:, sample], neighbours - 1, axis=1)[:, neighbours - 1]
        row, column = np.nonzero(block <= bound[:, None])
        values = block[row, column]
        order = np.lexsort((values, row))  # by row, nearest first; each row has >= neighbours
        first = np.searchsorted(row[order], np.arange(stop - start))
        taken = order[first[:, None] + np.arange(neighbours)]
        nearest[start:stop] = np.sqrt(values[taken])
    return nearest


def typicality(points):
    """TypiClust's typicality: 1 / mean distance to the nearest neighbours."""
    if len(points) == 1:
        return np.ones(1)
    nearest = nearest_distances(points, min(TYPICALITY_NEIGHBOURS, len(points) - 1))
    return 1.0 / (nearest.mean(1) + 1e-12)


def choose_typical(candidates, features, records, count, seed, min_gap=MIN_FRAME_GAP):
    """TypiClust: k-means with `count` clusters on the encoder's embedding;
    from each cluster, largest first, its most typical frame (the next most
    typical where the gap rule refuses one).

    Where the gap rule refuses every frame of a cluster (all of them within
    `min_gap` of frames already chosen in their runs), the clusters give
    their next most typical frames, largest first, until `count` are chosen
    or no candidate is apart from the chosen ones.
    """
    from sklearn.cluster import KMeans

    points = _embedding(features[candidates])
    clusters = min(count, len(candidates))
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(points)
    sizes = np.bincount(labels, minlength=clusters)
    ranked = []  # per cluster, largest first: (members most typical first, their typicality)
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(labels == cluster)
        typical = typicality(points[members])
        order = np.argsort(-typical, kind="stable")
        ranked.append((candidates[members[order]], typical[order]))
    chosen, scores, reasons, blocked = [], [], [], []
    tried = [0] * clusters  # a frame the gap rule refused stays refused: the chosen only grow
    for round_ in range(count):
        for rank, (rows, typical) in enumerate(ranked):
            while tried[rank] < len(rows) and not is_apart(int(rows[tried[rank]]), chosen, records, min_gap):
                tried[rank] += 1
            if tried[rank] == len(rows):
                blocked += [rank + 1] * (round_ == 0)
                continue
            chosen.append(int(rows[tried[rank]]))
            scores.append(float(typical[tried[rank]]))
            tried[rank] += 1
            what = f"cluster {rank + 1} of {clusters} ({len(rows)} frames)"
            why = f"most typical frame of {what}" if round_ == 0 else f"next most typical frame of {what}"
            if round_ and blocked:
                why += (f": every frame of cluster{'s' * (len(blocked) > 1)} {', '.join(map(str, blocked))} "
                        f"is within --min-gap {min_gap} of a chosen frame")
            reasons.append(why)
            if len(chosen) == count:
                return chosen, scores, reasons
        if all(tried[rank] == len(rows) for rank, (rows, _) in enumerate(ranked)):
            break
    return chosen, scores, reasons


def choose_coverage(candidates, features, records, count, min_gap=MIN_FRAME_GAP):
    """k-center greedy: the frame nearest the embedding's centre, then again
    and again the frame farthest from every frame chosen so far (one the
    gap rule allows; a copy of a chosen frame, at distance 0, comes last)."""
    points = _embedding(features[candidates])
    start = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
    chosen, scores, reasons = [int(candidates[start])], [0.0], ["nearest the centre of the embedding"]
    nearest = np.linalg.norm(points - points[start], axis=1)
    # Whom the gap rule refuses stays refused (the chosen only grow), so each
    # step is one pass over the frames, not a sort.
    available = np.ones(len(candidates), bool)
    available[start] = False
    while len(chosen) < count and available.any():
        index = int(np.argmax(np.where(available, nearest, -np.inf)))
        available[index] = False
        if not is_apart(int(candidates[index]), chosen, records, min_gap):
            continue
        chosen.append(int(candidates[index]))
        scores.append(float(nearest[index]))
        reasons.append(f"farthest from the frames chosen before (distance {nearest[index]:.3f})")
        nearest = np.minimum(nearest, np.linalg.norm(points - points[index], axis=1))
    return chosen, scores, reasons
