"""diffusers-edge: EDGE multimodal dataset distillation on the Hugging Face stack.

Lower bounds are the versions the test suite was run against (see CONTRIBUTING.md); no upper bounds are set
because no known break exists yet.
"""

from pathlib import Path

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # torch 2.14.1 + torchvision 0.29.1: the CPU-only torch 2.13.0 wheel has no torchvision that imports
    # beside it, and timm, peft and evaluate need a working torchvision (docs/method.md, "Library conventions we
    # rely on").
    "torch>=2.14",
    "torchvision>=0.29",
    "diffusers>=0.42",
    "transformers>=5.2",
    "datasets>=5.2",
    "accelerate>=1.15",
    "peft>=0.21",
    "huggingface_hub>=2.4",
    "safetensors>=0.8",
    "timm>=1.0.31",
    "numpy>=2.0",
    "pillow>=10.0",
    "tqdm>=4.66",
]

EXTRAS = {
    "metrics": ["evaluate>=0.4.6"],
    "test": ["pytest>=8.0", "pytest-timeout>=2.3", "ruff>=0.17", "evaluate>=0.4.6", "scipy>=1.11"],
    "docs": ["mkdocs>=1.6"],
}
EXTRAS["dev"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="diffusers-edge",
    version="0.1.0.dev0",
    description="EDGE multimodal dataset distillation with diffusion models, native to the Hugging Face stack",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"diffusers_edge": ["metrics/image_text_recall/*", "shapes/assets/**/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["diffusers-edge=diffusers_edge.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
