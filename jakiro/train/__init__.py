"""Draft-head training (``python -m jakiro.train.main`` or ``accelerate launch -m jakiro.train.main``)."""
