"""amir-bench: measure the speed and memory figures of docs/performance.md.

amir-bench                          # every benchmark
amir-bench benches=[loader]         # one of them
amir-bench loader.clips=[20000,100000] overhead.steps=50 prepare.files=80
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.bench.run import bench


@hydra_app("amir-bench", "bench")
def main(cfg: DictConfig) -> None:
    bench(cfg)


if __name__ == "__main__":
    main()
