"""``python -m mhc.pretrain``: the same as ``mhc-pretrain``."""

from mhc.cli.pretrain import main

if __name__ == "__main__":
    main()
