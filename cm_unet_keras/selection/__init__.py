"""Which frames to annotate: `choose_frames` ranks unlabeled frames by a
strategy (random, peak opacification, typicality in the encoder's
embedding, flip uncertainty) and `select_files` writes them out for an
annotation tool (`cm-unet select`)."""

from cm_unet_keras.selection.select import (DEFAULT_PRECISION, DEFAULT_STRATEGY, choose_frames, select_files,
                                            selection_settings, write_selection)
from cm_unet_keras.selection.strategies import MIN_FRAME_GAP, STRATEGIES

__all__ = ["DEFAULT_PRECISION", "DEFAULT_STRATEGY", "MIN_FRAME_GAP", "STRATEGIES", "choose_frames", "select_files",
           "selection_settings", "write_selection"]
