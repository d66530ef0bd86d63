from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
TEST_ONLY = {"pytest", "selenium", "ruff"}  # requirements.txt also installs what the test suite and CI need


def requirements() -> tuple[list[str], list[str]]:
    """requirements.txt split into (install requirements, test-only requirements)."""
    lines = [
        line.split("#")[0].strip() for line in (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    ]
    lines = [line for line in lines if line]
    name = lambda line: line.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()  # noqa: E731
    return [r for r in lines if name(r) not in TEST_ONLY], [r for r in lines if name(r) in TEST_ONLY]


INSTALL, TEST = requirements()

setup(
    name="jakiro",
    version="0.1.0",
    description="Lossless speculative decoding with Jakiro (decoupled MoE) draft heads over unmodified transformers models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["jakiro", "jakiro.*", "jakiro_star", "jakiro_star.*"]),
    package_data={"jakiro": ["heads/*/*", "heads/*/training_log/*/*", "train/*.json"], "jakiro_star": ["train/*.json"]},
    install_requires=INSTALL,
    # Draft-head variants jakiro finds without importing them (jakiro.variants).
    entry_points={"jakiro.variants": ["jakiro_star = jakiro_star.variant"]},
    extras_require={"test": TEST, "deepspeed": ["deepspeed>=0.14"]},
)
