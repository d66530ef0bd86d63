"""jakiro: lossless speculative decoding with Jakiro draft heads (arXiv 2502.06282)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "EaModel":  # imported lazily so that `import jakiro` stays light
        from .model.ea_model import EaModel

        return EaModel
    raise AttributeError(f"module 'jakiro' has no attribute {name!r}")


__all__ = ["EaModel", "__version__"]
