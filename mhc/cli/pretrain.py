"""``mhc-pretrain``: masked-modeling pretraining of a backbone on unlabelled inputs.

The objective follows the backbone (``objective.name=auto``): MAE for ``vit_*``, masked
tokens for ``seq_*``, SimMIM for the CNNs. Labels in the data are ignored. The backbone is
saved to ``output`` for ``mhc-train backbone.pretrained=FOLDER``. Examples::

    mhc-pretrain backbone=vit_tiny                      # MAE on the built-in scenes
    mhc-pretrain backbone=seq_small                     # masked tokens on the built-in sequences
    mhc-pretrain backbone=vit_tiny objective.mae.mask_ratio=0.6 trainer.max_epochs=20
"""

from __future__ import annotations

from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from mhc.api.train import PretrainResult, pretrain
from mhc.cli.common import console, hydra_app


@rank_zero_only
def show(result: PretrainResult) -> None:
    console.print(f"validation loss {result.metrics.get('val/loss', float('nan')):.4f}")
    console.print(f"pretrained backbone written to {result.output}; fine-tune with: "
                  f"mhc-train backbone.pretrained={result.output}")


@hydra_app("pretrain")
def main(cfg: DictConfig) -> None:
    show(pretrain(cfg))


if __name__ == "__main__":
    main()
