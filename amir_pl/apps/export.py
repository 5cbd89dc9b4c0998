"""amir-export: the trained net with its audio front end, for serving without amir-pl.

amir-export ckpt_path=outputs/train/<run>/checkpoints/last.ckpt               # torch.export (.pt2)
amir-export ckpt_path=... format=torchscript output=model.ts
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.inference.export import export


@hydra_app("amir-export", "export")
def main(cfg: DictConfig) -> None:
    print(f"exported ({cfg.format}): {export(cfg)}")


if __name__ == "__main__":
    main()
