"""amir-baseline: hand-crafted features + a scikit-learn classifier, the thesis's point of comparison.

amir-baseline data.path=data/quickstart.h5 also_evaluate=[data/quickstart_b.h5]
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.training.baseline import baseline


@hydra_app("amir-baseline", "baseline")
def main(cfg: DictConfig) -> None:
    baseline(cfg)


if __name__ == "__main__":
    main()
