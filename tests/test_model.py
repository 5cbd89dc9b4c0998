import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from amir_pl.training.augment import mel_centres
from amir_pl.training.model import HarmonicStack, ModelConfigError, RelaxedFrequencyNorm, SegalConvNet


def test_thesis_shapes_and_4608_flatten():
    net = SegalConvNet(input_shape=(128, 130), num_classes=12)
    x = torch.randn(2, 128, 130)
    assert net.num_features == 64 * 8 * 9 == 4608
    assert net.features(net.norm(x.unsqueeze(1))).shape == (2, 64, 8, 9)
    assert net.fc[1].in_features == 4608 and net.fc[1].out_features == 1024
    assert net(x).shape == (2, 12)
    assert net(x.unsqueeze(1)).shape == (2, 12)  # (batch, 1, mels, frames) works too


def test_shape_and_classes_come_from_arguments():
    net = SegalConvNet(input_shape=(32, 33), num_classes=5)
    assert net.num_features == 64 * 2 * 3
    assert net(torch.randn(3, 32, 33)).shape == (3, 5)


def _dropout_sites(net: nn.Module) -> dict[str, float]:
    """{site: p} for every Dropout module in the net, the site being its block's name."""
    sites = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Dropout):
            sites[name.split(".")[-2]] = module.p
    return sites


@pytest.mark.parametrize(
    ("model", "overrides", "expected"),
    [
        ("paper", [], {"conv2": 0.5, "conv3": 0.5, "conv4": 0.5, "fc": 0.5}),
        ("paper_as_run", [], {"conv3": 0.5, "conv4": 0.5, "fc": 0.5}),
        ("paper", ["model.dropout.conv2=0", "model.dropout.fc=0.3"], {"conv3": 0.5, "conv4": 0.5, "fc": 0.3}),
        (
            "paper",
            [
                "model.dropout.conv1=0.2",
                "model.dropout.conv2=0",
                "model.dropout.conv3=0",
                "model.dropout.conv4=0",
                "model.dropout.fc=0",
            ],
            {"conv1": 0.2},
        ),
    ],
)
def test_dropout_exactly_where_configured(compose_cfg, model, overrides, expected):
    cfg = compose_cfg("train", [f"model={model}", "data.path=x.h5", *overrides])
    net = instantiate(cfg.model, input_shape=(128, 130), num_classes=12)
    assert _dropout_sites(net) == expected
    # and each Dropout sits after its block's pool (conv; paper_as_run: between the ReLU and the pool,
    # as the author's code had it) or after the ReLU (fc)
    for site in expected:
        block = net.fc if site == "fc" else getattr(net.features, site)
        kinds = [type(layer) for layer in block]
        if site == "fc":
            assert kinds[-2:] == [nn.ReLU, nn.Dropout]
        elif model == "paper_as_run":
            assert kinds == [nn.Conv2d, nn.ReLU, nn.Dropout, nn.MaxPool2d]
        else:
            assert kinds == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout]


def test_unknown_dropout_position_is_refused():
    with pytest.raises(ModelConfigError, match="dropout_position"):
        SegalConvNet((128, 130), 12, dropout={"fc": 0.5}, dropout_position="after_relu")


def test_unknown_dropout_layer_is_refused():
    with pytest.raises(ModelConfigError, match="conv5"):
        SegalConvNet((128, 130), 12, dropout={"conv5": 0.5})
    with pytest.raises(ModelConfigError, match="must be in"):
        SegalConvNet((128, 130), 12, dropout={"fc": 1.5})


def test_running_norm_prediction_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    net = SegalConvNet((32, 33), 5, input_norm="running")
    net.train()
    for _ in range(3):  # accumulate running statistics
        net(torch.rand(8, 32, 33) * 3)
    net.eval()
    clip, others = torch.rand(1, 32, 33), torch.rand(7, 32, 33) * 10
    alone = net(clip)
    in_batch = net(torch.cat([clip, others]))[:1]
    torch.testing.assert_close(alone, in_batch)


def test_batch_norm_mode_uses_each_batch_statistics_at_eval_as_the_thesis_did():
    torch.manual_seed(0)
    net = SegalConvNet((32, 33), 5, input_norm="batch").eval()
    clip = torch.rand(1, 32, 33)
    alone = net(torch.cat([clip, clip * 0.5]))[:1]
    in_batch = net(torch.cat([clip, torch.rand(7, 32, 33) * 10]))[:1]
    assert not torch.allclose(alone, in_batch)
    norm = net.norm
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 1 and norm.running_mean is None
    assert norm.weight.numel() == 1 and norm.bias.numel() == 1  # trainable scalar gain and bias


def test_thesis_init():
    net = SegalConvNet((128, 130), 12, init="thesis")
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.weight.abs().max() <= 0.2 + 1e-6  # truncated at two standard deviations
            assert 0.08 < module.weight.std() < 0.1  # a normal truncated at 2 sd has sd 0.088
            assert torch.all(module.bias == 0.1)
    default = SegalConvNet((128, 130), 12, init="pytorch")
    assert not torch.all(default.classifier.bias == 0.1)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_time_pool_keeps_frequency_and_ignores_when(pool):
    net = SegalConvNet((128, 130), 12, time_pool=pool).eval()
    assert net.num_features == 64 * 8 and net.fc[1].in_features == 512
    x = torch.randn(2, 128, 130)
    maps = net.features(net.norm(x.unsqueeze(1)))
    pooled = maps.amax(dim=3) if pool == "max" else maps.mean(dim=3)
    torch.testing.assert_close(net(x), net.classifier(net.fc(pooled)))
    # a sound on silence and the same sound 32 frames later (two cells of the last map; both far enough
    # from the edges: a cell of the last map sees 46 frames) score alike; the thesis's flatten does not
    clip = torch.zeros(1, 128, 130)
    clip[..., 32:64] = torch.randn(1, 128, 32)
    later = torch.roll(clip, 32, dims=-1)
    torch.testing.assert_close(net(clip), net(later), atol=1e-5, rtol=1e-4)
    flatten = SegalConvNet((128, 130), 12).eval()
    assert not torch.allclose(flatten(clip), flatten(later), atol=1e-5, rtol=1e-4)


def test_unknown_time_pool_is_refused():
    with pytest.raises(ModelConfigError, match="time_pool"):
        SegalConvNet((128, 130), 12, time_pool="median")


def test_channels_per_block():
    net = SegalConvNet((128, 130), 12, channels=[32, 64, 128, 256], time_pool="max")
    widths = [block[0].out_channels for block in net.features]
    assert widths == [32, 64, 128, 256] and net.features.conv2[0].in_channels == 32
    assert net.num_features == 256 * 8 and net(torch.randn(2, 128, 130)).shape == (2, 12)
    assert SegalConvNet((128, 130), 12, channels=[32, 64, 128, 256]).num_features == 256 * 8 * 9
    with pytest.raises(ModelConfigError, match="model.channels"):
        SegalConvNet((128, 130), 12, channels=[32, 64])


def test_conv_norm_batch_normalises_each_conv_and_is_off_by_default():
    thesis = SegalConvNet((128, 130), 12)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in thesis.features.modules())
    assert all(block[0].bias is not None for block in thesis.features)
    net = SegalConvNet((128, 130), 12, conv_norm="batch", init="thesis", dropout={"conv2": 0.25})
    for block in net.features:
        conv, norm, relu = block[0], block[1], block[2]
        assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == conv.out_channels == 64
        assert conv.bias is None and isinstance(relu, nn.ReLU)  # the norm's shift replaces the bias
    x = torch.randn(4, 128, 130)
    net.train()
    maps = net.features.conv1[1](net.features.conv1[0](net.norm(x.unsqueeze(1))))
    # in training each channel is standardised over the batch (then the norm's gain 1 and bias 0)
    torch.testing.assert_close(maps.mean(dim=(0, 2, 3)), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.var(dim=(0, 2, 3), unbiased=False), torch.ones(64), atol=1e-3, rtol=0)
    assert net(x).shape == (4, 12) and net.eval()(x[:1]).shape == (1, 12)
    with pytest.raises(ModelConfigError, match="model.conv_norm"):
        SegalConvNet((128, 130), 12, conv_norm="layer")


def test_relaxed_frequency_norm_takes_out_what_a_source_adds_per_frequency():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 16, 20)
    ifn = RelaxedFrequencyNorm(lam=0.0)(x)
    # lam 0: every frequency row of every clip standardised over its channels and time
    torch.testing.assert_close(ifn.mean(dim=(1, 3)), torch.zeros(3, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(ifn.var(dim=(1, 3), unbiased=False), torch.ones(3, 16), atol=1e-3, rtol=0)
    # so a gain and an offset per frequency row and clip (a source's colouring) change nothing
    coloured = x * (1.0 + torch.rand(3, 1, 16, 1)) + 5.0 * torch.randn(3, 1, 16, 1)
    torch.testing.assert_close(RelaxedFrequencyNorm(lam=0.0)(coloured), ifn, atol=1e-4, rtol=1e-4)
    # lam 1: the whole map of each clip standardised (layer norm), the rows' differences kept
    ln = RelaxedFrequencyNorm(lam=1.0)(coloured)
    torch.testing.assert_close(ln.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert not torch.allclose(ln, RelaxedFrequencyNorm(lam=1.0)(x), atol=1e-2)
    half = RelaxedFrequencyNorm(lam=0.5)(x)
    torch.testing.assert_close(half, 0.5 * RelaxedFrequencyNorm(lam=1.0)(x) + 0.5 * ifn)
    # the same as torch's own norms: a layer norm of the map, an instance norm of each frequency row
    layer = torch.nn.functional.group_norm(x, 1)
    rows = torch.nn.functional.group_norm(x.transpose(1, 2), 16).transpose(1, 2)
    torch.testing.assert_close(RelaxedFrequencyNorm(lam=0.3)(x), 0.3 * layer + 0.7 * rows, atol=1e-5, rtol=1e-4)
    assert RelaxedFrequencyNorm()(x.to(memory_format=torch.channels_last)).shape == x.shape
    assert RelaxedFrequencyNorm()(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_rfn_after_named_blocks_only():
    net = SegalConvNet((128, 130), 12, rfn_after=["conv1", "conv2"], rfn_lambda=0.3)
    names = [name for name, _ in net.features.named_children()]
    assert names == ["conv1", "conv1_rfn", "conv2", "conv2_rfn", "conv3", "conv4"]
    assert net.features.conv1_rfn.lam == 0.3 and net(torch.randn(2, 128, 130)).shape == (2, 12)
    assert [name for name, _ in SegalConvNet((128, 130), 12).features.named_children()] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
    ]
    with pytest.raises(ModelConfigError, match="model.rfn_after"):
        SegalConvNet((128, 130), 12, rfn_after=["fc"])
    with pytest.raises(ModelConfigError, match="model.rfn_lambda"):
        SegalConvNet((128, 130), 12, rfn_after=["conv1"], rfn_lambda=1.5)


MELS = {"n_fft": 2048, "f_min": 0.0, "f_max": 11025.0, "n_mels": 128, "sample_rate": 22050, "mel_scale": "slaney"}


def test_harmonic_stack_holds_the_clip_at_each_multiple_of_each_bands_frequency():
    import numpy as np

    centres = mel_centres(MELS)
    stack = HarmonicStack(centres, [0.5, 1.0, 2.0, 3.0])
    x = torch.randn(2, 1, 128, 7)
    y = stack(x)
    assert y.shape == (2, 4, 128, 7)
    torch.testing.assert_close(y[:, 1], x[:, 0])  # h = 1: the clip itself
    for channel, h in enumerate((0.5, 1.0, 2.0, 3.0)):
        for band in (0, 20, 41, 60, 100, 127):
            wanted = h * float(centres[band])
            inside = float(centres[0]) <= wanted <= float(centres[-1])
            expected = np.interp(wanted, centres.numpy(), x[1, 0, :, 3].numpy()) if inside else 0.0
            assert float(y[1, channel, band, 3]) == pytest.approx(expected, abs=1e-5), (h, band)
    above_range = 2 * centres > centres[-1]  # the bands whose double lies above the mel range: zero
    assert 20 < int(above_range.sum()) < 128 and float(y[:, 2, above_range].abs().max()) == 0.0
    assert stack(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_harmonics_give_conv1_a_channel_each_and_need_the_mel_parameters():
    net = SegalConvNet((128, 130), 12, harmonics=[0.5, 1, 2, 3, 4, 5], features=MELS)
    assert net.features.conv1[0].in_channels == 6 and net(torch.randn(2, 128, 130)).shape == (2, 12)
    assert SegalConvNet((128, 130), 12).features.conv1[0].in_channels == 1  # the thesis: one channel
    x = torch.randn(3, 128, 130)
    with torch.no_grad():
        plain = net.eval()(x)
        with torch.autocast("cpu", torch.bfloat16):  # bf16-mixed, as the recipes train on a CPU with bf16
            torch.testing.assert_close(net(x).float(), plain, atol=0.05, rtol=0.05)
        torch.testing.assert_close(net.to(memory_format=torch.channels_last)(x), plain, atol=1e-5, rtol=1e-4)
    for bad in ([0, 1], [float("nan"), 1], [-1.0]):
        with pytest.raises(ModelConfigError, match=r"model.harmonics=\[.*\]: give multiples"):
            SegalConvNet((128, 130), 12, harmonics=bad, features=MELS)
    with pytest.raises(ModelConfigError, match="model.harmonics needs the dataset's mel parameters"):
        SegalConvNet((128, 130), 12, harmonics=[1, 2])
    with pytest.raises(ModelConfigError, match=r"features.n_mels=128 is not the input's 64 bands"):
        SegalConvNet((64, 130), 12, harmonics=[1, 2], features=MELS)
    with pytest.raises(ModelConfigError, match="mel bands do not rise in frequency"):
        SegalConvNet((128, 130), 12, harmonics=[1, 2], features={**MELS, "n_fft": 256})
