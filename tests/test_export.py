import pytest
import torch

from amir_pl.features.audio import MelFrontEnd
from amir_pl.features.params import FeatureParams
from amir_pl.inference.export import export, load_exported
from amir_pl.training.module import load_checkpoint


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_exported_model_gives_the_checkpoints_probabilities(compose_cfg, checkpoint, tmp_path, fmt):
    path = export(compose_cfg("export", [f"ckpt_path={checkpoint}", f"format={fmt}"]))
    assert path.parent == tmp_path and path.is_file()
    model, metadata = load_exported(path)
    module = load_checkpoint(checkpoint).eval()
    features = FeatureParams.from_mapping(module.hparams["features"])
    assert metadata["class_names"] == module.hparams["class_names"]
    assert metadata["features"] == features.as_dict()
    torch.manual_seed(0)
    t = torch.arange(features.clip_samples) / features.sample_rate
    waveforms = torch.stack(
        [0.3 * torch.sin(2 * torch.pi * f * t) + 0.02 * torch.randn_like(t) for f in (110, 440, 1760)]
    )
    with torch.no_grad():
        expected = torch.softmax(module.net(MelFrontEnd(features)(waveforms)), dim=1)
        got = model(waveforms)
    assert got.shape == (3, len(metadata["class_names"]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(waveforms[:1]), expected[:1], atol=1e-5, rtol=1e-4)  # any batch size
