"""``python -m mhc.predict``: same as ``mhc-predict``."""

from mhc.cli.predict import main

if __name__ == "__main__":
    main()
