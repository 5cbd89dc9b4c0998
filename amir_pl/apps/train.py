"""amir-train: fit the thesis ConvNet on a dataset file, then score the best checkpoint.

amir-train data.path=data/set.h5 [model=paper_as_run] [trainer=ddp trainer.devices=4] [experiment=paper]
amir-train ... resume=true        # continue the last run of this same command from its last checkpoint
"""

from __future__ import annotations

import shlex
import sys

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.training.fault_tolerance import Preempted, run_dir_of
from amir_pl.training.train import train


def resume_command(run_dir) -> str:
    """This command line again, continuing ``run_dir`` (any resume= it had replaced)."""
    kept = [arg for arg in sys.argv[1:] if arg.lstrip("+").split("=", 1)[0] != "resume"]
    return shlex.join(["amir-train", *kept, f"resume={run_dir}"])


@hydra_app("amir-train", "train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Preempted as stop:
        then = (
            "the job is requeued and continues in this run folder by itself"
            if stop.handed_to
            else f"to continue: {resume_command(run_dir_of(stop.path))}"
        )
        print(f"amir-train: {stop}; {then}", file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
