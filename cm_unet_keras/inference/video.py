"""Cine runs a person can look at: `cm-unet predict --video`.

For each multi-frame (cine) input, `CineViews` writes, beside the per-frame
PNGs:

- `NAME_overlay.mp4`: every frame with its vessel mask in colour and the
  frame number burnt in, at `VIDEO_FPS`. H.264 (`avc1`) where the OpenCV
  build can encode it, else MPEG-4 Part 2 (`mp4v`, which the pip OpenCV
  wheels write): both in an MP4 container that VLC, QuickTime, Windows'
  player and ffmpeg read (web browsers need H.264).
- `NAME_filling.png`: the vessel-filling curve (vessel fraction of the
  field of view per frame) with the best frame marked;
- `NAME_cine.json`: the per-run summary (the curve, the best frame, the
  frames near peak opacification, the files).

The best frame is the peak of the curve smoothed over 3 frames: the frame
of fullest opacification, the one to read (or to annotate). The curve's
rules (`best_frame`, `near_peak`) live in `data.filling_curve`, which
`cm-unet select` reads too.

A run that stops early (a frame that cannot be decoded) keeps what was
written: its video is finished, a complete MP4 of the frames before the
failure, each with its number burnt in; it gets no curve and no summary,
which would describe a run that was not read to its end.
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np

from cm_unet_keras.data.filling_curve import best_frame, near_peak
from cm_unet_keras.data.normalize import field_of_view_host

VIDEO_FPS = 15
VIDEO_CODECS = ("avc1", "mp4v")
CURVE_SIZE = (720, 360)  # width, height of the curve plot


def vessel_fraction(angiogram, vessel_mask):
    """Share of the field of view's pixels that the mask calls vessel."""
    fov = field_of_view_host(np.asarray(angiogram, np.float32))
    return float(np.count_nonzero(vessel_mask & fov)) / max(int(np.count_nonzero(fov)), 1)


def open_video(path, width, height, fps=VIDEO_FPS):
    """A `cv2.VideoWriter` for `path` with the first codec of `VIDEO_CODECS`
    this OpenCV can write."""
    # FFmpeg's own lines about a missing H.264 encoder, read when OpenCV
    # first opens FFmpeg; a level the user set is kept.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # a codec it lacks is not an error
    try:
        for codec in VIDEO_CODECS:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
            if writer.isOpened():
                return writer
            writer.release()
    finally:
        cv2.utils.logging.setLogLevel(previous)
    raise RuntimeError(f"{path}: this OpenCV build writes none of the MP4 codecs {', '.join(VIDEO_CODECS)}")


def plot_curve(curve, best, near, title, size=CURVE_SIZE):
    """A BGR plot of the vessel-filling curve (percent of the field of view
    per frame), the frames near peak opacification shaded, `best` marked."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    plot = np.full((height, width, 3), 255, np.uint8)
    values = np.asarray(curve, np.float64) * 100.0
    high = max(float(values.max()) * 1.1, 1e-6)
    span = max(len(values) - 1, 1)
    x = lambda frame: int(round(left + (width - left - right) * frame / span))  # noqa: E731
    y = lambda value: int(round(height - bottom - (height - top - bottom) * value / high))  # noqa: E731
    for frame in np.flatnonzero(near):
        cv2.rectangle(plot, (x(frame - 0.5), top), (x(frame + 0.5), height - bottom), (225, 240, 225), -1)
    cv2.line(plot, (left, height - bottom), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.line(plot, (left, top), (left, height - bottom), (0, 0, 0), 1)
    points = np.array([(x(frame), y(value)) for frame, value in enumerate(values)], np.int32)
    cv2.polylines(plot, [points], False, (160, 60, 0), 2, cv2.LINE_AA)
    cv2.circle(plot, (x(best), y(values[best])), 6, (0, 0, 220), 2, cv2.LINE_AA)
    text = lambda words, at, scale=0.45: cv2.putText(plot, words, at, cv2.FONT_HERSHEY_SIMPLEX, scale,  # noqa: E731
                                                     (0, 0, 0), 1, cv2.LINE_AA)
    text(title, (left, 25), 0.55)
    text(f"best frame {best}: {values[best]:.2f}%", (x(best) + 10, max(y(values[best]) - 8, top + 12)))
    text("frame (shaded: near peak opacification)", (width // 2 - 150, height - 12))
    text(f"{0}", (left - 4, height - bottom + 18))
    text(f"{len(values) - 1}", (width - right - 12, height - bottom + 18))
    text(f"{high:.1f}%", (8, top + 5))
    text("vessel %", (8, height // 2))
    text("0%", (40, height - bottom + 5))
    return plot


class CineView:
    """The overlay video, filling curve and summary of one cine run, fed
    frame by frame (`add`) and finished by `close`."""

    def __init__(self, output_dir, name, source, fps=VIDEO_FPS):
        self.output_dir, self.name, self.source, self.fps = Path(output_dir), name, str(source), fps
        self.video_path = self.output_dir / f"{name}_overlay.mp4"
        self.frames, self.curve, self.writer, self.size = [], [], None, None

    def add(self, frame_number, overlay_bgr, fraction):
        """Append one frame's overlay (BGR) and its vessel fraction."""
        if self.writer is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            height, width = overlay_bgr.shape[:2]
            self.size = (width + width % 2, height + height % 2)  # codecs want even sides
            self.writer = open_video(self.video_path, *self.size, fps=self.fps)
        picture = cv2.copyMakeBorder(overlay_bgr, 0, self.size[1] - overlay_bgr.shape[0], 0,
                                     self.size[0] - overlay_bgr.shape[1], cv2.BORDER_CONSTANT)
        label = f"frame {frame_number}"
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(picture, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, thickness, cv2.LINE_AA)
        self.writer.write(picture)
        self.frames.append(int(frame_number))
        self.curve.append(float(fraction))

    def release(self):
        """Finish the video file with the frames added so far (a playable MP4)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def close(self):
        """Finish the video; write the curve plot and the summary.

        Returns:
            The summary dict (also in `NAME_cine.json`).
        """
        if self.writer is None:
            return None
        self.release()
        index = best_frame(self.curve)
        near = near_peak(self.curve)
        curve_path = self.output_dir / f"{self.name}_filling.png"
        cv2.imwrite(str(curve_path), plot_curve(self.curve, index, near, f"{self.name}: vessel filling"))
        summary = {
            "source": self.source, "frames": len(self.frames), "fps": self.fps,
            "best_frame": self.frames[index], "best_vessel_fraction": self.curve[index],
            "near_peak_frames": [self.frames[i] for i in np.flatnonzero(near)],
            "vessel_fraction": dict(zip(map(str, self.frames), self.curve)),
            "video": self.video_path.name, "filling_plot": curve_path.name,
        }
        (self.output_dir / f"{self.name}_cine.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary


class CineViews:
    """`CineView`s of the cine runs among the records of a `predict` call:
    `add(record, angiogram, vessel_mask, overlay)` for every frame in order,
    then `close()`, which returns the summaries of the runs; or, when the
    call stops early, `abandon()`."""

    def __init__(self, output_dir, fps=VIDEO_FPS):
        self.output_dir, self.fps = output_dir, fps
        self.open, self.summaries = None, []

    def add(self, record, angiogram, vessel_mask, overlay_bgr):
        if record.frame is None:
            return
        if self.open is None or self.open.source != str(record.image_path):
            self._finish()
            suffix = f"_f{record.frame:04d}"  # index_unlabeled's frame names
            run_name = record.name[:-len(suffix)] if record.name.endswith(suffix) else record.name
            self.open = CineView(self.output_dir, run_name, record.image_path, self.fps)
        self.open.add(record.frame, overlay_bgr, vessel_fraction(angiogram, vessel_mask))

    def _finish(self):
        if self.open is not None:
            summary = self.open.close()
            if summary:
                self.summaries.append(summary)
            self.open = None

    def close(self):
        self._finish()
        return self.summaries

    def abandon(self):
        """Finish the open run's video with the frames it has, and write no
        curve or summary for it (its run was not read to the end)."""
        if self.open is not None:
            self.open.release()
            self.open = None
