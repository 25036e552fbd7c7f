"""``python -m epochkit.cv --config config.yaml``: K-fold cross-validation and the refit from a LightningCLI config
(see :mod:`epochkit.cv.cli`)."""

from epochkit.cv.cli import main

if __name__ == "__main__":
    main()
