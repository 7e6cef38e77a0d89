"""The label-efficiency study lives in `cm_unet_keras.experiments.study`.

`cm_unet_keras.study` is that very module (not a copy), so scripts that
import it, and tests that replace its functions, keep working.
"""

import sys

from cm_unet_keras.experiments import study

sys.modules[__name__] = study
