"""Packaging for cm-unet-keras.

TensorFlow is an extra on purpose: `pip install .[cpu]` brings tensorflow-cpu,
`pip install .[cuda]` brings tensorflow[and-cuda]; installing both wheels in
one environment gives two conflicting TensorFlows.
"""

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithPresets(build_py):
    """Ship `saved_models/` (the presets and their cards) inside the package,
    as `cm_unet_keras/saved_models/`, so that `from_preset` and `--model
    cmunet_small_xca` work right after `pip install`, with no checkout.
    Editable installs read `saved_models/` of the checkout instead."""

    def run(self):
        super().run()
        source = HERE / "saved_models"
        if source.is_dir() and not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "cm_unet_keras" / "saved_models"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))

VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "cm_unet_keras" / "version.py").read_text()
).group(1)

setup(
    name="cm-unet-keras",
    version=VERSION,
    description=(
        "Coronary artery segmentation in X-ray angiograms with few labels: "
        "a U-Net pretrained by contrastive masked autoencoding (CM-UNet), in Keras 3."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["cm_unet_keras", "cm_unet_keras.*"]),
    # The public angiograms `cm-unet demo` segments (sources and licences in
    # cm_unet_keras/demo_data/README.md).
    # The annotation page (`cm-unet annotate`): its HTML, JavaScript and stylesheet, served as they are.
    package_data={"cm_unet_keras": ["demo_data/*.md", "demo_data/cimat/*.png", "demo_data/arcade/*/*.png",
                                    "annotate/static/*.html", "annotate/static/*.js", "annotate/static/*.css"]},
    # Upper bounds: below the next major release we have not tested (the
    # suite runs on keras 3.15, tensorflow 2.21, numpy 2.4, opencv 5.0, pydicom 3.0,
    # pylibjpeg 2.1 with libjpeg 2.5, openjpeg 2.6 and rle 2.2, python-gdcm 3.2).
    install_requires=[
        "keras>=3.3,<4",
        "numpy>=1.24,<3",
        "opencv-python-headless>=4.8,<6",
        "scikit-image>=0.21,<1",
        "scipy>=1.10,<2",
        "pydicom>=3.0,<4",
        # pydicom's decoders for the compressed syntaxes XA cines are stored in:
        # JPEG baseline/extended/lossless and JPEG-LS (libjpeg), JPEG 2000
        # (openjpeg), RLE (rle); without them such files cannot be read.
        "pylibjpeg>=2.0,<3",
        "pylibjpeg-libjpeg>=2.1,<3",
        "pylibjpeg-openjpeg>=2.0,<3",
        "pylibjpeg-rle>=2.0,<3",
        # The GDCM library, for the compressed frames every pydicom plugin
        # refuses (12-bit JPEG extended with a non-standard scan header, as
        # some GE scanners write): data.gdcm_frames decodes them frame by frame.
        "python-gdcm>=3.0.20,<4",
        "keras-tuner>=1.4,<2",
        # scikit-learn: `cm-unet select`'s default strategy (typical) clusters
        # with its KMeans (selection/strategies.py), and KerasTuner's Bayesian
        # oracle (`cm-unet tune --algorithm bayesian`) needs it without declaring it.
        "scikit-learn>=1.3,<2",
        # keras-tuner imports tensorboard's summary API but does not depend on it.
        "tensorboard>=2.16,<3",
        "pyyaml>=6.0,<7",
        "matplotlib>=3.7,<4",
    ],
    extras_require={
        # No tensorflow-cpu wheel exists for macOS on Apple silicon: there
        # the plain tensorflow wheel is the CPU build.
        "cpu": [
            "tensorflow-cpu>=2.16,<3; sys_platform != 'darwin' or platform_machine != 'arm64'",
            "tensorflow>=2.16,<3; sys_platform == 'darwin' and platform_machine == 'arm64'",
        ],
        "cuda": ["tensorflow[and-cuda]>=2.16,<3"],
        "onnx": ["tf2onnx>=1.17,<2", "onnx>=1.17,<2", "onnxruntime>=1.20,<2"],
        # pytest-xdist: `make test` runs the suite in two processes (see the Makefile).
        # playwright drives the system's Chromium in the annotation page's test
        # (`make test` installs Chromium; Playwright's own browser download is never used).
        # jax[cpu]: tests/test_pretrain_jax.py runs recipes/pretrain_jax.py's step on
        # Keras' JAX backend against the TensorFlow pretrainer's.
        "dev": ["pytest>=7.4,<10", "hypothesis>=6.90,<7", "pytest-timeout>=2.2,<3", "pytest-xdist>=3.5,<4",
                "playwright>=1.40,<2", "jax[cpu]>=0.10,<1"],
    },
    entry_points={"console_scripts": ["cm-unet=cm_unet_keras.cli:main"]},
    cmdclass={"build_py": BuildWithPresets},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
