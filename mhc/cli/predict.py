"""``mhc-predict ckpt=PATH data.predict=FILE.csv``: per-task classes and probabilities to CSV.

The input is a manifest (an ``image`` column, or a ``text`` column for a text model, encoded
with the checkpoint's tokenizer; label columns are optional and ignored, a
``<task>__allowed`` column still restricts that task's classes). The output has one row per
input row, in order: the input column (``image`` or ``text``) as written, then per task the
predicted class (multilabel: ``a|b``) and one ``<task>__p_<class>`` column per class.
"""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from mhc.api.evaluate import predict
from mhc.cli.common import console, hydra_app


@hydra_app("predict")
def main(cfg: DictConfig) -> None:
    out = predict(cfg)
    console.print(f"{len(pd.read_csv(out, usecols=[0]))} predictions written to {out}")


if __name__ == "__main__":
    main()
