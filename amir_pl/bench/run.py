"""amir-bench: measure what the speed and memory figures of docs/performance.md claim.

    amir-bench                          # every benchmark below
    amir-bench benches=[loader]         # one of them
    amir-bench loader.clips=[20000,100000] overhead.steps=50 prepare.files=80

- ``loader``: training DataLoader throughput (shuffled, collated tensors) over a
  generated float16 file, for each file size and read-run length, with the
  peak resident memory of the main process and of each worker.
- ``prepare``: amir-prepare's clips/s (decode, resample, mel, HDF5 write) on
  generated recordings, against the librosa pipeline (``librosa.load`` at
  22,050 Hz + ``melspectrogram`` per clip) on the same files, in 1 and in
  ``num_workers`` processes.
- ``predict``: amir-predict's seconds of audio per second (decode, resample, mel,
  the thesis ConvNet on 3 s windows every 1.5 s, aggregation) on generated
  44.1 kHz stereo recordings.
- ``overhead``: ``Trainer.fit`` step rate against a bare PyTorch loop over the
  same model and the same batches, side by side in one run: both wait for the GPU only
  at the ends of the timed window, the order alternates over ``overhead.rounds`` rounds
  (bare, Lightning, Lightning, bare, ...), and the medians are reported with every round.
- ``train``: end-to-end ``Trainer.fit`` training samples/s over a generated file for
  each set of speed options (precision, channels_last, torch.compile, cudnn
  benchmark, data.cache), each beside its bare-model ceiling: the same net and
  options on random tensors already on the device.
- ``train_cpu``: training on the CPU end to end as ``amir-train`` trains it (``train_cpu.overrides``,
  default ``experiment=transfer``: the DataModule, augmentation, ``Trainer.fit``) in each precision,
  beside the bare step of the same net in each precision and over the bare float32 channels_last step
  timed in the same run.
- ``stream``: one epoch over a file too big to cache (default 300,000 clips, ~10 GB)
  with the training DataLoader: clips/s and the peak memory of every process.

Results go to stdout and to ``bench.json`` in the run directory. Tests never time anything.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from amir_pl.core.errors import AmirError
from amir_pl.core.files import atomic_write
from amir_pl.dataset.schema import write_synthetic
from amir_pl.features.params import FeatureParams
from amir_pl.training.data import H5DataModule
from amir_pl.training.host_memory import keep_freed_memory
from amir_pl.training.module import AmirModule
from amir_pl.training.precision import cpu_bf16_features
from amir_pl.training.train import build_module


def app_config(name: str, overrides=()) -> DictConfig:
    """Another app's config as Hydra composes it (its defaults and ``overrides``), to run its library
    function here; inside a running app through its Hydra instance, else through a new one."""
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides))
    with initialize_config_module("amir_pl.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _loader_epoch(path: str, batch_size: int, num_workers: int, read_run: int | None, epochs: int, queue) -> None:
    """Run in a fresh process so that its peak memory belongs to this measurement alone."""
    multiprocessing.set_start_method("fork", force=True)  # workers start as in training, not re-spawned
    baseline = peak_rss_mb()  # the interpreter with torch, Lightning and h5py imported
    datamodule = H5DataModule(
        path,
        batch_size=batch_size,
        num_workers=num_workers,
        read_run=read_run,
        pin_memory=False,
        persistent_workers=True,
    )
    loader = datamodule.train_dataloader()
    rates = []
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        start, clips = time.perf_counter(), 0
        iterator = iter(loader)
        for x, _ in iterator:
            clips += len(x)
        rates.append(clips / (time.perf_counter() - start))
    workers = getattr(iterator, "_workers", [])
    queue.put(
        {
            "clips_per_s_each_epoch": [round(r) for r in rates],
            "rss_mb_after_imports": round(baseline, 1),
            "peak_rss_mb_main": round(peak_rss_mb(), 1),
            "peak_rss_mb_workers": [round(peak_rss_mb(w.pid), 1) for w in workers],
        }
    )


def bench_loader(cfg: DictConfig, work_dir: Path) -> list[dict]:
    rows = []
    context = multiprocessing.get_context("spawn")
    for clips in cfg.clips:
        path = work_dir / f"bench_{clips}.h5"
        per_class = -(-clips // 12)
        write_synthetic(path, {"train": per_class}, features=FeatureParams(), overwrite=True)
        try:
            for num_workers in cfg.num_workers:
                for read_run in cfg.read_runs:
                    queue = context.Queue()
                    process = context.Process(
                        target=_loader_epoch,
                        args=(str(path), cfg.batch_size, num_workers, read_run, cfg.epochs, queue),
                    )
                    process.start()
                    result = queue.get()
                    process.join()
                    row = {
                        "clips": per_class * 12,
                        "file_gb": round(path.stat().st_size / 1e9, 2),
                        "num_workers": num_workers,
                        "read_run": read_run or "chunk",
                        "batch_size": cfg.batch_size,
                        **result,
                    }
                    rows.append(row)
                    print(f"loader: {row}", flush=True)
        finally:
            if not cfg.keep_files:
                path.unlink(missing_ok=True)
    return rows


class _Batches:
    """The same in-memory batches for both loops (a list would read as several dataloaders to Lightning)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _WindowTimer(L.Callback):
    """Times batches ``warmup`` .. ``last`` of one epoch, waiting for the GPU only at the two ends, as the bare loop."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last, self.start, self.end = warmup, last, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:  # the batch is on the device by now, as in the bare loop
            _synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            _synchronize()
            self.end = time.perf_counter()


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_steps(net: torch.nn.Module, batches, warmup: int, device, autocast=None) -> float:
    """Seconds taken by the bare training steps (Adam, cross-entropy) after the first ``warmup``,
    waiting for the GPU only at the two ends of the timed window."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if step == warmup:
            _synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            loss = F.cross_entropy(net(x.float()), y)
        loss.backward()
        optimizer.step()
    _synchronize()
    return time.perf_counter() - start


def _bare_round(module: AmirModule, batches: list, warmup: int, device) -> float:
    """Steps/s of a bare PyTorch loop: the same net, loss and optimiser, no Lightning."""
    return (len(batches) - warmup) / _timed_steps(module.net.to(device).train(), batches, warmup, device)


def _timing_trainer(callback: L.Callback, accelerator: str = "auto", **options) -> L.Trainer:
    """A Trainer that only trains, on one device: no validation, loggers, checkpoints or progress bar."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback],
        use_distributed_sampler=False,
        **options,
    )


def _lightning_round(module: AmirModule, batches: list, warmup: int) -> float:
    """Steps/s of ``Trainer.fit`` over the same batches."""
    timer = _WindowTimer(warmup, len(batches) - 1)
    trainer = _timing_trainer(timer, max_epochs=1)
    trainer.fit(module, train_dataloaders=_Batches(batches))
    return (len(batches) - warmup) / (timer.end - timer.start)


def bench_overhead(cfg: DictConfig, model_cfg: DictConfig) -> dict:
    """Trainer.fit against a bare loop on the same batches, fairly: both wait for the GPU only at the
    ends of the timed window, the order alternates (bare, Lightning, Lightning, bare, ...) so that
    neither always runs on a colder or hotter device, and the medians of ``rounds`` windows are reported
    (the ratio is the median of each round's ratio, the two runs of a round being side by side)."""
    rounds = cfg.get("rounds", 5)
    if not isinstance(rounds, int) or rounds < 1:
        raise AmirError(f"bench overhead.rounds={rounds}: give a whole number of rounds >= 1 (e.g. overhead.rounds=5)")
    if cfg.steps <= cfg.warmup:
        raise AmirError(
            f"bench overhead.steps={cfg.steps} leaves no timed step after overhead.warmup={cfg.warmup}: "
            f"set overhead.steps above overhead.warmup"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    shape = tuple(cfg.input_shape)
    batches = [
        (torch.randn(cfg.batch_size, *shape).half(), torch.randint(0, 12, (cfg.batch_size,))) for _ in range(cfg.steps)
    ]
    bare, lightning = [], []
    for index in range(rounds):
        bare_first = index % 2 == 0
        if bare_first:
            bare.append(_bare_round(_module(model_cfg, shape, {}), batches, cfg.warmup, device))
        lightning.append(_lightning_round(_module(model_cfg, shape, {}), batches, cfg.warmup))
        if not bare_first:
            bare.append(_bare_round(_module(model_cfg, shape, {}), batches, cfg.warmup, device))
        order = "bare then lightning" if bare_first else "lightning then bare"
        print(
            f"overhead: round {index + 1}/{rounds} ({order}): bare {bare[-1]:.3f}, "
            f"Trainer.fit {lightning[-1]:.3f} steps/s",
            flush=True,
        )
    ratios = [light / plain for light, plain in zip(lightning, bare)]
    result = {
        "device": _device_name(),
        "batch_size": cfg.batch_size,
        "input_shape": list(shape),
        "timed_steps": cfg.steps - cfg.warmup,
        "rounds": rounds,
        "bare_steps_per_s": round(statistics.median(bare), 3),
        "lightning_steps_per_s": round(statistics.median(lightning), 3),
        "lightning_over_bare": round(statistics.median(ratios), 3),
        "per_round": {
            "bare_steps_per_s": [round(v, 3) for v in bare],
            "lightning_steps_per_s": [round(v, 3) for v in lightning],
            "lightning_over_bare": [round(v, 3) for v in ratios],
        },
    }
    print(f"overhead: {result}", flush=True)
    return result


class _EpochTimer(L.Callback):
    """Wall time and samples of the last training epoch (the first one warms up: compile, cuDNN, page cache)."""

    def on_train_epoch_start(self, trainer, pl_module):
        _synchronize()
        self.start, self.samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module):
        _synchronize()
        self.seconds = time.perf_counter() - self.start


def _module(model_cfg: DictConfig, shape, options) -> AmirModule:
    return AmirModule(
        net=model_cfg,
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-4},
        class_names=[str(i) for i in range(12)],
        features={**FeatureParams().as_dict(), "n_mels": shape[0]},  # random clips: placed as mels of that size
        input_shape=shape,
        channels_last=options.get("channels_last", False),
        compile=options.get("compile", False),
    )


def _bare_ceiling(model_cfg: DictConfig, shape, batch_size: int, steps: int, options, device=None) -> float:
    """Samples/s of the bare training step with these options on random tensors already on the device
    (positive, as power mels are: a net that compresses them takes their log)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = _module(model_cfg, shape, options).to(device)
    module.configure_model()
    x = torch.rand(batch_size, 1, *shape, device=device)
    if getattr(module.net, "needs_input_statistics", False):  # model.input_norm=band
        module.net.fit_input_statistics(x[:, 0])
    y = torch.randint(0, 12, (batch_size,), device=device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=str(options.get("precision", "32")).startswith("bf16")
    )
    warmup = max(3, steps // 5)
    return steps * batch_size / _timed_steps(module.net.train(), [(x, y)] * (warmup + steps), warmup, device, autocast)


def bench_train(cfg: DictConfig, model_cfg: DictConfig, work_dir: Path) -> list[dict]:
    path = work_dir / "bench_train.h5"
    per_class = -(-cfg.clips // 12)
    write_synthetic(path, {"train": per_class}, features=FeatureParams(), overwrite=True)
    shape = (FeatureParams().n_mels, FeatureParams().frames)
    rows = []
    try:
        for name in cfg.run or list(cfg.variants):
            if name not in cfg.variants:
                raise AmirError(f"bench train.run: no variant {name!r}; choose from {list(cfg.variants)}")
            options = dict(cfg.variants[name] or {})
            datamodule = H5DataModule(
                str(path),
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                read_run=cfg.get("read_run"),
                cache=options.get("cache", "none"),
                persistent_workers=True,
            )
            timer = _EpochTimer()
            trainer = _timing_trainer(
                timer,
                max_epochs=cfg.epochs,
                precision=options.get("precision", "32-true"),
                benchmark=options.get("benchmark", False),
            )
            trainer.fit(_module(model_cfg, shape, options), datamodule=datamodule)
            end_to_end = timer.samples / timer.seconds
            ceiling = _bare_ceiling(model_cfg, shape, cfg.batch_size, cfg.bare_steps, options)
            row = {
                "variant": name,
                **options,
                "batch_size": cfg.batch_size,
                "clips": per_class * 12,
                "samples_per_s": round(end_to_end),
                "bare_ceiling_samples_per_s": round(ceiling),
                "of_ceiling": round(end_to_end / ceiling, 3),
                "device": _device_name(),
            }
            rows.append(row)
            print(f"train: {row}", flush=True)
    finally:
        path.unlink(missing_ok=True)
    return rows


def bench_train_cpu(cfg: DictConfig, work_dir: Path) -> list[dict]:
    """Training on the CPU end to end, as ``amir-train <cfg.overrides>`` trains (the DataModule reading the
    HDF5 file, augmentation, the net, Adam: ``Trainer.fit``, no validation or checkpoints), in each of
    ``cfg.precisions``, beside the bare step of the same net in each precision on tensors in memory. Every
    figure is also given over the bare float32 channels_last step, timed in the same run."""
    path = work_dir / "bench_train_cpu.h5"
    features = FeatureParams()
    write_synthetic(path, {"train": -(-cfg.clips // 12)}, features=features, overwrite=True)
    shape = (features.n_mels, features.frames)
    cpu = torch.device("cpu")
    rows = []
    try:
        configs = {
            precision: app_config("train", [f"data.path={path}", *cfg.overrides, f"trainer.precision={precision}"])
            for precision in cfg.precisions
        }
        keep = all(train_cfg.get("keep_freed_memory") for train_cfg in configs.values())
        if keep:  # as amir-train does (process-wide: keep_freed_memory=false is measured in a process of its own)
            keep_freed_memory()

        def bare_step(train_cfg, precision: str, channels_last: bool) -> float:
            options = {"precision": precision, "channels_last": channels_last}
            return _bare_ceiling(train_cfg.model, shape, train_cfg.data.batch_size, cfg.bare_steps, options, device=cpu)

        reference_cfg = app_config("train", [f"data.path={path}", *cfg.overrides, "trainer.precision=32-true"])
        reference = bare_step(reference_cfg, "32-true", True)
        bare = {
            precision: reference
            if precision == "32-true" and train_cfg.module.get("channels_last")
            else bare_step(train_cfg, precision, bool(train_cfg.module.get("channels_last")))
            for precision, train_cfg in configs.items()
        }
        for precision, train_cfg in configs.items():
            L.seed_everything(train_cfg.seed)
            datamodule = instantiate(train_cfg.data)
            timer = _EpochTimer()
            trainer = _timing_trainer(timer, accelerator="cpu", max_epochs=cfg.epochs, precision=precision)
            trainer.fit(build_module(train_cfg, datamodule), datamodule=datamodule)
            end_to_end = timer.samples / timer.seconds
            row = {
                "precision": precision,
                "overrides": list(cfg.overrides),
                "clips": datamodule.info.splits["train"],
                "batch_size": train_cfg.data.batch_size,
                "threads": torch.get_num_threads(),
                "keep_freed_memory": keep,
                "samples_per_s": round(end_to_end, 1),
                "bare_samples_per_s": round(bare[precision], 1),
                "of_bare": round(end_to_end / bare[precision], 3),
                "bare_fp32_channels_last_samples_per_s": round(reference, 1),
                "over_bare_fp32_channels_last": round(end_to_end / reference, 3),
                "device": _device_name(cpu),
            }
            rows.append(row)
            print(f"train_cpu: {row}", flush=True)
    finally:
        path.unlink(missing_ok=True)
    return rows


def bench_stream(cfg: DictConfig, work_dir: Path) -> dict:
    """The training loader over a file of ``cfg.clips`` clips: one epoch, clips/s, peak memory per process."""
    path = work_dir / "bench_stream.h5"
    per_class = -(-cfg.clips // 12)
    start = time.perf_counter()
    write_synthetic(path, {"train": per_class}, features=FeatureParams(), overwrite=True)
    written = time.perf_counter() - start
    context = multiprocessing.get_context("spawn")
    try:
        queue = context.Queue()
        process = context.Process(
            target=_loader_epoch, args=(str(path), cfg.batch_size, cfg.num_workers, None, cfg.epochs, queue)
        )
        process.start()
        result = queue.get()
        process.join()
    finally:
        size = path.stat().st_size if path.exists() else 0
        if not cfg.keep_file:
            path.unlink(missing_ok=True)
    row = {
        "clips": per_class * 12,
        "file_gb": round(size / 1e9, 2),
        "write_s": round(written, 1),
        "num_workers": cfg.num_workers,
        "batch_size": cfg.batch_size,
        **result,
    }
    print(f"stream: {row}", flush=True)
    return row


def _device_name(device: torch.device | None = None) -> str:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "cpu")
    bf16 = ", ".join(cpu_bf16_features()) or "none"
    return f"{model} ({torch.get_num_threads()} threads; native bf16: {bf16})"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _one_thread() -> None:
    """One BLAS/OpenMP thread per process, so that n processes use n cores, not n x n threads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)


def _librosa_file(path: str) -> int:
    import librosa

    y, sample_rate = librosa.load(path, sr=22050)
    clips = 0
    for start in range(0, len(y) - 66150 + 1, 66150):
        librosa.feature.melspectrogram(y=y[start : start + 66150], sr=sample_rate, n_mels=128)
        clips += 1
    return clips


def bench_prepare(cfg: DictConfig, work_dir: Path) -> dict:
    from amir_pl.dataset.prepare import prepare

    root = work_dir / "bench_audio"
    files = _write_recordings(root, cfg.files, cfg.seconds)
    result = {
        "files": cfg.files,
        "seconds_each": cfg.seconds,
        "format": "44.1 kHz stereo 16-bit WAV",
        "num_workers": cfg.num_workers,
    }
    prepare_cfg = app_config("prepare")
    prepare_cfg.merge_with(
        {
            "source": str(root),
            "output": str(work_dir / "bench_prepare.h5"),
            "overwrite": True,
            "classes": ["piano"],
            "num_workers": cfg.num_workers,
            "progress": False,
            "paths": {"output_dir": str(work_dir / "bench_prepare_run")},
        }
    )
    start = time.perf_counter()
    report = prepare(prepare_cfg)
    clips = sum(report["clips"].values())
    result["amir_prepare_clips_per_s"] = round(clips / (time.perf_counter() - start), 1)
    (work_dir / "bench_prepare.h5").unlink(missing_ok=True)
    try:
        import librosa  # noqa: F401  (a test-only dependency)
    except ImportError:
        result["librosa"] = "not installed (pip install librosa)"
    else:
        _librosa_file(files[0])  # compile librosa's numba kernels before timing
        start = time.perf_counter()
        clips = sum(_librosa_file(path) for path in files)
        result["librosa_1_process_clips_per_s"] = round(clips / (time.perf_counter() - start), 1)
        with multiprocessing.get_context("fork").Pool(cfg.num_workers, initializer=_one_thread) as pool:
            pool.map(_librosa_file, files[: cfg.num_workers])  # warm each worker
            start = time.perf_counter()
            clips = sum(pool.map(_librosa_file, files, chunksize=1))
        result["librosa_n_processes_clips_per_s"] = round(clips / (time.perf_counter() - start), 1)
        result["speedup_vs_librosa_1_process"] = round(
            result["amir_prepare_clips_per_s"] / result["librosa_1_process_clips_per_s"], 2
        )
        result["speedup_vs_librosa_n_processes"] = round(
            result["amir_prepare_clips_per_s"] / result["librosa_n_processes_clips_per_s"], 2
        )
    for path in files:
        Path(path).unlink()
    print(f"prepare: {result}", flush=True)
    return result


def _write_recordings(root: Path, files: int, seconds: float, label: str = "piano") -> list[str]:
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 44100)) / 44100
    paths = []
    for i in range(files):
        tone = 0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(len(t))
        path = root / label / f"take{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), np.stack([tone, tone * 0.8], axis=1).astype(np.float32), 44100, subtype="PCM_16")
        paths.append(str(path))
    return paths


def bench_predict(cfg: DictConfig, model_cfg: DictConfig, work_dir: Path) -> dict:
    """amir-predict on an untrained thesis ConvNet (speed does not depend on the weights)."""
    import io

    import lightning

    from amir_pl.core.labels import CLASS_NAMES
    from amir_pl.inference.predict import last_level_cache_bytes, predict

    features = FeatureParams()
    module = AmirModule(
        net=model_cfg,
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-4},
        class_names=CLASS_NAMES,
        features=features.as_dict(),
        input_shape=(features.n_mels, features.frames),
    )
    checkpoint = work_dir / "bench_predict.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        checkpoint,
    )
    root = work_dir / "bench_predict_audio"
    paths = _write_recordings(root, cfg.files, cfg.seconds)
    predict_cfg = app_config("predict")
    predict_cfg.merge_with(
        {
            "ckpt_path": str(checkpoint),
            "inputs": str(root),
            "num_workers": cfg.num_workers,
            "batch_size": cfg.batch_size,
            "tta_semitones": cfg.get("tta_semitones", []),
            "paths": {"output_dir": str(work_dir / "bench_predict_run")},
        }
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rows = predict(predict_cfg)
    elapsed = time.perf_counter() - start
    audio_seconds = sum(row["duration_s"] for row in rows)
    result = {
        "files": cfg.files,
        "seconds_each": cfg.seconds,
        "format": "44.1 kHz stereo 16-bit WAV",
        "windows": sum(row["windows_used"] for row in rows),
        "hop_seconds": predict_cfg.hop_seconds,
        "tta_semitones": next((row["tta_semitones"] for row in rows if "tta_semitones" in row), []),  # as used
        "num_workers": cfg.num_workers,
        "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "cpu_last_level_cache_mb": round((last_level_cache_bytes() or 0) / 2**20),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seconds_of_audio_per_second": round(audio_seconds / elapsed, 1),
    }
    for path in paths:
        Path(path).unlink()
    checkpoint.unlink()
    print(f"predict: {result}", flush=True)
    return result


def bench(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    results = {}
    if "loader" in cfg.benches:
        results["loader"] = bench_loader(cfg.loader, Path(cfg.loader.work_dir or out_dir))
    if "prepare" in cfg.benches:
        results["prepare"] = bench_prepare(cfg.prepare, Path(cfg.loader.work_dir or out_dir))
    if "predict" in cfg.benches:
        results["predict"] = bench_predict(cfg.predict, cfg.model, Path(cfg.loader.work_dir or out_dir))
    if "overhead" in cfg.benches:
        results["overhead"] = bench_overhead(cfg.overhead, cfg.model)
    if "train" in cfg.benches:
        results["train"] = bench_train(cfg.train, cfg.model, Path(cfg.loader.work_dir or out_dir))
    if "stream" in cfg.benches:
        results["stream"] = bench_stream(cfg.stream, Path(cfg.loader.work_dir or out_dir))
    if "train_cpu" in cfg.benches:  # last: keep_freed_memory stays on for the rest of the process
        results["train_cpu"] = bench_train_cpu(cfg.train_cpu, Path(cfg.loader.work_dir or out_dir))
    atomic_write(out_dir / "bench.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    print(f"results: {out_dir / 'bench.json'}")
    return results
