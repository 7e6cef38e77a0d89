"""The vessel-filling curve of a cine run: one value per frame (the vessel
fraction of the field of view, or a vesselness measure) that rises as the
contrast fills the arteries and falls as it washes out.

`predict --video` plots it and marks its best frame; `select` proposes only
the frames near its peak. Both read the curve with these functions, so the
frames a video shades as near peak opacification are the frames `select`
may propose.
"""

import numpy as np

# Frames whose smoothed filling is at least this fraction of the way from
# the run's lowest value to its highest are near peak opacification (after
# the contrast arrives, before it washes out).
PEAK_LEVEL = 0.6
# A curve moving less than this fraction of its highest value has no
# arrival or washout: every frame counts as near the peak.
FLAT_CURVE = 0.05


def smoothed(curve):
    """A 3-frame moving average (the ends average what they have)."""
    curve = np.asarray(curve, np.float64)
    if len(curve) < 3:
        return curve
    padded = np.concatenate([[curve[0]], curve, [curve[-1]]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0


def near_peak(curve, level=PEAK_LEVEL):
    """Boolean per frame of a run's filling curve: not before the contrast
    arrives nor after it washes out (see `PEAK_LEVEL`, `FLAT_CURVE`)."""
    curve = smoothed(curve)
    low, high = curve.min(), curve.max()
    if high - low <= FLAT_CURVE * max(abs(high), 1e-12):
        return np.ones(len(curve), bool)
    return curve >= low + level * (high - low)


def best_frame(curve):
    """The index of the smoothed curve's peak: the frame of fullest
    opacification, the one to read (or to annotate)."""
    return int(np.argmax(smoothed(curve)))
