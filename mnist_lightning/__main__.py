"""``python -m mnist_lightning``: the ``mnist-lightning`` command."""

from mnist_lightning.cli.main import main

if __name__ == "__main__":
    main()
