"""jakiro_star: the Jakiro* variant (static EAGLE-1 tree, two GELU experts of the base's intermediate width).

Everything but the draft head, the static tree and the training loss is shared with ``jakiro``.
"""


def __getattr__(name: str):
    if name == "EaModel":  # imported lazily so that `import jakiro_star` stays light
        from .model.ea_model import EaModel

        return EaModel
    raise AttributeError(f"module 'jakiro_star' has no attribute {name!r}")


__all__ = ["EaModel"]
