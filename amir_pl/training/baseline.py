"""The baseline (amir-baseline): hand-crafted features + a scikit-learn classifier, the thesis's point
of comparison.

MFCC statistics (mean and standard deviation over time of 20 MFCCs and of
their deltas: 80 numbers a clip) are computed from the dataset file's own mel
spectrograms, so the baseline sees exactly the clips the ConvNet sees. The
classifier is trained on ``train`` and scored on the file's ``test_splits`` and
on every split of the files in ``also_evaluate``, with the same metrics and
report files as amir-train (keys ``<split>`` and ``<file stem>/<split>``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio
from omegaconf import DictConfig
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from amir_pl.core.errors import AmirError
from amir_pl.dataset.schema import DatasetInfo, read_info
from amir_pl.training import report
from amir_pl.training.data import ContiguousBatchSampler, H5ClipDataset
from amir_pl.training.module import classification_metrics


def mfcc_statistics(
    info: DatasetInfo, split: str, n_mfcc: int = 20, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 4 * n_mfcc), labels (N,)) for one split, read in contiguous batches."""
    dataset = H5ClipDataset(info.path, split, info.splits[split])
    dct = torchaudio.functional.create_dct(n_mfcc, info.features.n_mels, norm="ortho")  # (n_mels, n_mfcc)
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)
    features, labels = [], []
    for indices in ContiguousBatchSampler(len(dataset), batch_size):
        x, y, *_ = dataset.__getitems__(indices)  # (x, y) or (x, y, targets)
        mel = x.float()
        if info.features.scale == "power":
            mel = to_db(mel.unsqueeze(1)).squeeze(1)  # the 80 dB floor per clip, as for scale=db files
        mfcc = torch.einsum("nmt,mk->nkt", mel, dct)
        deltas = torchaudio.functional.compute_deltas(mfcc)
        stats = [mfcc.mean(-1), mfcc.std(-1), deltas.mean(-1), deltas.std(-1)]
        features.append(torch.cat(stats, dim=1).numpy())
        labels.append(y.numpy())
    return np.concatenate(features), np.concatenate(labels)


def make_classifier(cfg: DictConfig):
    if cfg.classifier == "svm":
        model = SVC(C=cfg.C, gamma="scale", random_state=cfg.seed)
    elif cfg.classifier == "logreg":
        model = LogisticRegression(C=cfg.C, max_iter=5000, random_state=cfg.seed)
    else:
        raise AmirError(f"classifier={cfg.classifier!r}: expected svm or logreg")
    return make_pipeline(StandardScaler(), model)


def score(classifier, info: DatasetInfo, split: str, n_mfcc: int) -> dict:
    x, y = mfcc_statistics(info, split, n_mfcc)
    metrics = classification_metrics(len(info.class_names))
    metrics.update(torch.from_numpy(classifier.predict(x)).long(), torch.from_numpy(y).long())
    return report.split_summary(metrics.compute(), info.class_names)


def baseline(cfg: DictConfig) -> dict[str, dict]:
    info = read_info(cfg.data.path)
    x, y = mfcc_statistics(info, "train", cfg.n_mfcc)
    classifier = make_classifier(cfg).fit(x, y)
    summaries = {split: score(classifier, info, split, cfg.n_mfcc) for split in cfg.test_splits if split in info.splits}
    for path in cfg.also_evaluate or []:
        other = read_info(path)
        if other.class_names != info.class_names or other.features != info.features:
            raise AmirError(f"also_evaluate: {path} has other classes or features than data.path={info.path}")
        for split in other.splits:
            summaries[f"{Path(path).stem}/{split}"] = score(classifier, other, split, cfg.n_mfcc)
    report.publish(Path(cfg.paths.output_dir), summaries, info.class_names)
    return summaries
