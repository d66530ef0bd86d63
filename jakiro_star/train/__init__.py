"""Jakiro* training: ``python -m jakiro_star.train.main`` (``jakiro.train.main`` with ``--arch jakiro_star``)."""
