"""amir-synth: the built-in dataset, solo phrases rendered offline from General MIDI soundfonts.

amir-synth output=data/synth clips_per_class=150
amir-synth output=data/synth_b seed=2 '~splits.train' '~splits.val' 'splits.test.families=[fluid]'
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.dataset.synth import synth


@hydra_app("amir-synth", "synth")
def main(cfg: DictConfig) -> None:
    synth(cfg)


if __name__ == "__main__":
    main()
