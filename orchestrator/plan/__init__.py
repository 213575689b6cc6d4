"""Planning: how to lay a model onto a cluster. Pure Python: nothing here imports torch."""
