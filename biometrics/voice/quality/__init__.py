"""Quality gates: how much speech a sample holds and whether it is clean enough to use."""
