"""Applications built on ``EaModel``: the web UI (``python -m jakiro.application.webui``)."""
