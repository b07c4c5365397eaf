"""``python -m mhc.analyze``: the same as ``mhc-analyze``."""

from mhc.cli.analyze import main

if __name__ == "__main__":
    main()
