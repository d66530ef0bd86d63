from setuptools import find_packages, setup

setup(
    name="jakiro",
    version="0.1.0",
    description="Lossless speculative decoding with Jakiro (decoupled MoE) draft heads over unmodified transformers models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["jakiro", "jakiro.*", "jakiro_star", "jakiro_star.*"]),
    package_data={"jakiro": ["heads/*/*", "train/*.json"], "jakiro_star": ["train/*.json"]},
    install_requires=[
        "torch>=2.6,<2.15",
        "transformers>=5.23,<5.25",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "gguf>=0.10",
        "tqdm>=4.60",
        "numpy>=1.24",
        "fschat>=0.2.36",
        "gradio>=6.0",
    ],
    # Draft-head variants jakiro finds without importing them (jakiro.variants).
    entry_points={"jakiro.variants": ["jakiro_star = jakiro_star.variant"]},
    extras_require={"test": ["pytest>=8", "selenium>=4.20"], "deepspeed": ["deepspeed>=0.14"]},
)
