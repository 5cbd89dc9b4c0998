"""amir-predict: the instrument in recordings of any length.

amir-predict ckpt_path=outputs/train/<run>/checkpoints/last.ckpt inputs=[song.wav,recordings/]
amir-predict ckpt_path=... inputs=take.flac hop_seconds=0.75 aggregation=vote top_k=5 timeline=true
amir-predict ckpt_path=[seed1/best.ckpt,seed2/best.ckpt] inputs=song.wav   # an ensemble: scores averaged
"""

from __future__ import annotations

from omegaconf import DictConfig

from amir_pl.apps._app import hydra_app
from amir_pl.inference.predict import predict


@hydra_app("amir-predict", "predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
