"""``python -m mhc.train``: same as ``mhc-train``."""

from mhc.cli.train import main

if __name__ == "__main__":
    main()
