"""``python -m memlab`` (and ``torchrun ... -m memlab train``): the console script's entry, so an
interruption while torch loads ends in one line, as it does for ``memlab``."""

from memlab.launcher import main

if __name__ == "__main__":  # (importing the module, as pydoc does, runs nothing)
    main()
