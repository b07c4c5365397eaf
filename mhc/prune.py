"""``python -m mhc.prune``: the same as ``mhc-prune``."""

from mhc.cli.prune import main

if __name__ == "__main__":
    main()
