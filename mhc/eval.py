"""``python -m mhc.eval``: same as ``mhc-eval``."""

from mhc.cli.eval import main

if __name__ == "__main__":
    main()
