"""Draft head, tree drafting, verification, KV cache and the ``EaModel`` wrapper."""
