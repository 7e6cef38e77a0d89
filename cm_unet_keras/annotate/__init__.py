"""`cm-unet annotate`: correct the model's masks in the browser.

A folder of angiograms (`N.png`, as `cm-unet select` writes them) is served
on a local page where each frame opens with its saved mask (`N_gt.png`) or
the model's, and a person corrects it with a brush and an eraser. Saving
writes `N_gt.png` beside the frame, so `cm-unet finetune --pairs FOLDER`
trains on it as it is.

- `store.AnnotationFolder`: the frames, their images and masks, atomic
  saves with the earlier versions kept and a log of the work done.
- `prefill.Prefill`: the model's mask of a frame, as `cm-unet predict`
  computes it, cached on disk.
- `server`: the page and its HTTP API, a thin layer over the two.
"""
