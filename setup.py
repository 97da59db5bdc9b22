"""tfcompress: pruning, quantization-aware training and distillation inside one
`model.fit`, and verified TFLite export, on top of the TensorFlow Model
Optimization toolkit."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "tfcompress" / "version.py").read_text(),
    re.M,
).group(1)

# The Colab tutorials and benchmark plots use matplotlib; tests execute the tutorials with nbclient.
EXAMPLES = ["scikit-learn>=1.3", "matplotlib>=3.7"]
DEV = EXAMPLES + ["pytest>=7.4", "pytest-xdist>=3.5", "nbformat>=5.9", "nbclient>=0.9", "ipykernel>=6.25", "jupytext>=1.16", "jax[cpu]>=0.4.34"]

setup(
    name="tfcompress",
    version=VERSION,
    description=__doc__.strip().replace("\n", " "),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfcompress", "tfcompress.*", "tflite_export", "tflite_export.*"]),
    python_requires=">=3.10",
    install_requires=[
        # tf_keras must come from the same minor release as TensorFlow.
        "tensorflow>=2.21,<2.22",
        "tf_keras>=2.21,<2.22",
        # tfcompress reaches into tfmot internals (tfcompress/_tfmot.py): pinned to the tested release line.
        "tensorflow-model-optimization>=0.8.1,<0.9",
        "numpy>=1.26",
        "absl-py>=1.4",
        "ai-edge-litert>=2.0",
        # tflite_export writes TFLite metadata with the published flatbuffer schema.
        "flatbuffers>=24.3",
    ],
    extras_require={"examples": EXAMPLES, "dev": DEV},
    entry_points={"console_scripts": ["tfcompress=tflite_export.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "License :: OSI Approved :: Apache Software License",
    ],
)
