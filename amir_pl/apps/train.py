"""amir-train: fit the thesis ConvNet on a dataset file, then score the best checkpoint.

amir-train data.path=data/set.h5 [model=paper_as_run] [trainer=ddp trainer.devices=4] [experiment=paper]
amir-train ... resume=true        # continue the last run of this same command from its last checkpoint
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.training.fault_tolerance import Preempted
from amir_pl.training.train import train


@hydra_app("amir-train", "train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Preempted as stop:
        then = (
            "the job is requeued and continues in this run folder by itself"
            if stop.handed_to
            else "run the same command with resume=true to continue"
        )
        print(f"amir-train: {stop}; {then}", file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
