"""Segal's (2016) ConvNet as a plain ``nn.Module`` (no Lightning here).

4 x [conv 3x3 (64 filters, stride 1, same padding) -> ReLU -> 2x2 max-pool,
stride 2, "same" padding] -> flatten (64 x 8 x 9 = 4,608 for 128 x 130) ->
FC 1,024 -> ReLU -> one logit per class. TensorFlow's "same" max-pool keeps
ceil(n / 2) positions, which is ``ceil_mode=True`` here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from amir_pl.core.errors import AmirError
from amir_pl.training.augment import band_interpolation, mel_centres


class ModelConfigError(AmirError, ValueError):
    """A model option with a value the net cannot be built from."""


DROPOUT_SITES = ("conv1", "conv2", "conv3", "conv4", "fc")
INPUT_NORMS = ("running", "batch", "band", "none")
COMPRESSIONS = ("none", "db")
INITS = ("thesis", "pytorch")
DROPOUT_POSITIONS = ("after_pool", "before_pool")
TIME_POOLS = ("none", "max", "mean")
CONV_NORMS = ("none", "batch")


def input_normalisation(mode: str) -> nn.Module:
    """The thesis's per-batch scalar standardisation with a trainable scalar gain and bias.

    A ``BatchNorm2d`` over the single input channel is exactly that: one mean and
    variance over the whole batch, one gain, one bias.

    - ``running``: batch statistics in training, running averages in evaluation, so
      a clip's prediction does not depend on the rest of its batch (the default).
    - ``batch``: batch statistics in training and evaluation, as the thesis's code did.
    - ``band``: each mel band standardised by its mean and deviation over the training split
      (``BandNorm``; fitted before training, saved in the checkpoint).
    - ``none``: no normalisation.
    """
    if mode == "running":
        return nn.BatchNorm2d(1)
    if mode == "batch":
        return nn.BatchNorm2d(1, track_running_stats=False)
    if mode == "band":
        return BandNorm()
    if mode == "none":
        return nn.Identity()
    raise ModelConfigError(f"model.input_norm={mode!r} is not one of {INPUT_NORMS}")


class BandNorm(nn.Module):
    """Per-mel-band standardisation with statistics of the training split, kept as buffers, so the
    checkpoint carries them to amir-evaluate, amir-predict and amir-export."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("mean", "std"):  # sized by the checkpoint (the number of mel bands)
            if prefix + name in state_dict:
                current = getattr(self, name)
                setattr(
                    self, name, torch.empty(state_dict[prefix + name].shape, dtype=current.dtype, device=current.device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """``x``: (clips, 1, n_mels, frames), as this module will see them."""
        self.mean = x.mean(dim=(0, 1, 3)).to(self.mean.device)
        self.std = x.std(dim=(0, 1, 3)).clamp_min(1e-5).to(self.std.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.numel() == 0:
            raise AmirError("model.input_norm=band: the band statistics were never fitted (fit_input_statistics)")
        return (x - self.mean[:, None]) / self.std[:, None]


class RelaxedFrequencyNorm(nn.Module):
    """Relaxed instance frequency-wise normalisation (RFN; Kim et al., Interspeech 2022), for recordings
    from sources never heard in training: ``lam * LN(x) + (1 - lam) * IFN(x)``. IFN standardises each
    frequency row of each clip's map over its channels and time, taking out what a source (a
    soundfont, a room, a microphone) puts into the frequency statistics; the layer-norm share keeps
    some of what IFN would take away from the class. No parameters; the same in training and evaluation.
    """

    def __init__(self, lam: float = 0.5, eps: float = 1e-5):
        super().__init__()
        self.lam, self.eps = float(lam), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, channels, frequency, time)."""
        # As (batch, frequency, time, channels), which is how a channels_last map lies in memory (a view,
        # no copy): a frequency row is then a contiguous block, and both norms are torch's fused layer
        # norm, over the last two axes (each row) and the last three (the whole map).
        z = x.permute(0, 2, 3, 1)
        rows = F.layer_norm(z, z.shape[2:], eps=self.eps)
        whole = F.layer_norm(z, z.shape[1:], eps=self.eps)
        return (self.lam * whole + (1.0 - self.lam) * rows).permute(0, 3, 1, 2)


class HarmonicStack(nn.Module):
    """One input channel per harmonic ``h``: band m of channel h holds the clip at h x band m's centre
    frequency (linear between the two nearest bands; 0 beyond the first and last centres, which is the
    mean of the normalised input with ``input_norm=band``). At a note's fundamental a 3x3 conv then sees
    the strength of its partials side by side whatever the pitch: the harmonic stacking of Won et al.
    (ICASSP 2020, "Data-driven harmonic filters") on a fixed mel axis.
    """

    def __init__(self, centres: torch.Tensor, harmonics: Sequence[float]):
        super().__init__()
        centres = centres.double()
        if not bool((centres[1:] > centres[:-1]).all()):
            raise ModelConfigError(
                "model.harmonics: the dataset's mel bands do not rise in frequency (too few FFT bins for its "
                "n_mels); prepare it with a larger features.n_fft or fewer features.n_mels"
            )
        wanted = torch.tensor([float(h) for h in harmonics], dtype=torch.float64)[:, None] * centres[None]
        upper, weight = band_interpolation(centres, wanted)
        inside = (wanted >= centres[0]) & (wanted <= centres[-1])
        self.register_buffer("lower", (upper - 1).flatten(), persistent=False)
        self.register_buffer("upper", upper.flatten(), persistent=False)
        self.register_buffer("above", (weight * inside).float().flatten()[:, None], persistent=False)
        self.register_buffer("below", ((1 - weight) * inside).float().flatten()[:, None], persistent=False)
        self.channels = len(harmonics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, 1, bands, frames) -> (batch, harmonics, bands, frames)."""
        bands = x.shape[2]
        x = x[:, 0]
        below = x.index_select(1, self.lower) * self.below.to(x.dtype)
        above = x.index_select(1, self.upper) * self.above.to(x.dtype)
        return (below + above).unflatten(1, (self.channels, bands))


class ConvBlock(nn.Sequential):
    """conv 3x3 -> ReLU -> 2x2 max-pool, with dropout after the pool or, as the author's code
    had it for conv3 and conv4, between the ReLU and the pool (``before_pool``). ``conv_norm=batch``
    puts a ``BatchNorm2d`` between the conv (then without a bias) and the ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float,
        dropout_position: str = "after_pool",
        conv_norm: str = "none",
    ):
        batch_norm = conv_norm == "batch"
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        if dropout > 0 and dropout_position == "before_pool":
            layers += [nn.Dropout(dropout), pool]
        elif dropout > 0:
            layers += [pool, nn.Dropout(dropout)]
        else:
            layers.append(pool)
        super().__init__(*layers)


class SegalConvNet(nn.Module):
    """The thesis ConvNet for inputs of ``input_shape = (n_mels, frames)`` and ``num_classes`` classes.

    ``channels``: the filters of every conv block (the thesis: 64), or a list of four, one a block
    (e.g. ``[32, 64, 128, 256]``: more filters where the map is small; 1.2x the multiply-adds).

    ``dropout`` maps a site (conv1..conv4, fc after the ReLU) to a probability; sites left
    out or at 0 get no dropout layer at all. ``dropout_position`` puts the conv sites'
    dropout after the max-pool (``after_pool``) or between the ReLU and the pool
    (``before_pool``, what the author's code did). ``time_pool`` (``max`` or ``mean``) pools the last
    conv block's map over time before the FC layer, keeping its frequency axis: the FC layer then
    sees where in frequency a pattern is, not when (``none``, the thesis: the whole map flattened).
    ``conv_norm=batch`` normalises every conv's output over the batch (``BatchNorm2d``; the thesis
    has none: ``none``). ``rfn_after`` names the conv blocks whose output goes through a
    ``RelaxedFrequencyNorm`` with ``rfn_lambda`` (none in the thesis). ``harmonics`` gives conv1 one
    input channel per multiple of each band's frequency (``HarmonicStack``), placed with ``features``,
    the dataset file's mel parameters; none in the thesis.
    """

    def __init__(
        self,
        input_shape: tuple[int, int],
        num_classes: int,
        channels: int | Sequence[int] = 64,
        fc_units: int = 1024,
        dropout: Mapping[str, float] | None = None,
        input_norm: str = "running",
        init: str = "pytorch",
        dropout_position: str = "after_pool",
        compression: str = "none",
        time_pool: str = "none",
        conv_norm: str = "none",
        rfn_after: Sequence[str] = (),
        rfn_lambda: float = 0.5,
        harmonics: Sequence[float] = (),
        features: Mapping | None = None,
    ):
        super().__init__()
        dropout = dict(dropout or {})
        unknown = sorted(set(dropout) - set(DROPOUT_SITES))
        if unknown:
            raise ModelConfigError(
                f"model.dropout has unknown layer(s) {unknown}; the layers are {list(DROPOUT_SITES)}"
            )
        for site, p in dropout.items():
            if not 0.0 <= float(p) < 1.0:
                raise ModelConfigError(f"model.dropout.{site}={p} must be in [0, 1)")
        if dropout_position not in DROPOUT_POSITIONS:
            raise ModelConfigError(f"model.dropout_position={dropout_position!r} is not one of {DROPOUT_POSITIONS}")
        if init not in INITS:
            raise ModelConfigError(f"model.init={init!r} is not one of {INITS}")
        if compression not in COMPRESSIONS:
            raise ModelConfigError(f"model.compression={compression!r} is not one of {COMPRESSIONS}")
        if time_pool not in TIME_POOLS:
            raise ModelConfigError(f"model.time_pool={time_pool!r} is not one of {TIME_POOLS}")
        if conv_norm not in CONV_NORMS:
            raise ModelConfigError(f"model.conv_norm={conv_norm!r} is not one of {CONV_NORMS}")
        rfn_after = [str(site) for site in rfn_after]
        if not set(rfn_after) <= set(DROPOUT_SITES[:4]):
            raise ModelConfigError(f"model.rfn_after={rfn_after}: name conv blocks of {list(DROPOUT_SITES[:4])}")
        if not 0.0 <= float(rfn_lambda) <= 1.0:
            raise ModelConfigError(f"model.rfn_lambda={rfn_lambda} must be in [0, 1] (0: instance norm only)")
        harmonics = [float(h) for h in harmonics]
        if not all(0 < h < math.inf for h in harmonics):
            raise ModelConfigError(
                f"model.harmonics={harmonics}: give multiples of the frequency > 0, e.g. [0.5,1,2,3]"
            )
        if harmonics and not features:
            raise ModelConfigError("model.harmonics needs the dataset's mel parameters (features) to place the bands")
        if harmonics and int(features["n_mels"]) != int(input_shape[0]):
            raise ModelConfigError(
                f"model.harmonics: the dataset's features.n_mels={features['n_mels']} is not the input's "
                f"{input_shape[0]} bands"
            )
        widths = [int(channels)] * 4 if isinstance(channels, int) else [int(c) for c in channels]
        if len(widths) != 4 or min(widths) < 1:
            raise ModelConfigError(
                f"model.channels={channels}: give one number of filters for all four conv blocks, or a list of four"
            )
        self.input_shape = tuple(input_shape)
        # db: 10 log10 of the power mels (torchaudio's AmplitudeToDB), for a dataset of linear power
        self.compress = torchaudio.transforms.AmplitudeToDB("power") if compression == "db" else nn.Identity()
        self.norm = input_normalisation(input_norm)
        # model.harmonics: conv1 sees the clip at each multiple of each band's frequency, one channel each
        self.harmonic_stack = HarmonicStack(mel_centres(features), harmonics) if harmonics else nn.Identity()
        in_channels = max(1, len(harmonics))
        blocks = {}
        for site, width in zip(DROPOUT_SITES[:4], widths):
            blocks[site] = ConvBlock(in_channels, width, float(dropout.get(site, 0.0)), dropout_position, conv_norm)
            if site in rfn_after:
                blocks[f"{site}_rfn"] = RelaxedFrequencyNorm(rfn_lambda)
            in_channels = width
        self.features = nn.Sequential(OrderedDict(blocks))
        height, width = self.input_shape
        for _ in range(4):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        # over time only: (batch, channels, bands, 1), flattened in band order as the thesis's map is
        pools = {"max": nn.AdaptiveMaxPool2d((None, 1)), "mean": nn.AdaptiveAvgPool2d((None, 1))}
        self.time_pool = pools.get(time_pool, nn.Identity())
        self.num_features = widths[-1] * height * (width if time_pool == "none" else 1)
        fc = [nn.Flatten(), nn.Linear(self.num_features, fc_units), nn.ReLU(inplace=True)]
        if float(dropout.get("fc", 0.0)) > 0:
            fc.append(nn.Dropout(float(dropout["fc"])))
        self.fc = nn.Sequential(*fc)
        self.classifier = nn.Linear(fc_units, num_classes)
        if init == "thesis":
            self.apply(_thesis_init)

    @property
    def needs_input_statistics(self) -> bool:
        return isinstance(self.norm, BandNorm)

    def fit_input_statistics(self, x: torch.Tensor) -> None:
        """Fit the per-band statistics (``input_norm=band``) on training clips (clips, n_mels, frames)."""
        self.norm.fit(self.compress(x.float().unsqueeze(1)))

    def forward(
        self, x: torch.Tensor, return_embedding: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x``: (batch, n_mels, frames) or (batch, 1, n_mels, frames) -> logits (batch, classes);
        with ``return_embedding``, also the FC layer's output before its ReLU (batch, fc_units), which
        ``module.contrastive_weight`` pulls together for clips of one class (a keyword of forward, not a
        second method, so that a compiled net, ``module.compile``, compiles this call too)."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = self.harmonic_stack(self.norm(self.compress(x)))
        flatten, linear, *activation = self.fc
        embedding = linear(flatten(self.time_pool(self.features(x))))
        hidden = embedding.clone() if return_embedding else embedding  # the ReLU works in place
        for layer in activation:  # the ReLU, and the fc site's dropout where there is one
            hidden = layer(hidden)
        logits = self.classifier(hidden)
        return (logits, embedding) if return_embedding else logits


def _thesis_init(module: nn.Module) -> None:
    """Weights ~ truncated normal (std 0.1, cut at 2 std, as TensorFlow's), biases 0.1."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
        if module.bias is not None:  # a conv before a BatchNorm has none
            nn.init.constant_(module.bias, 0.1)
