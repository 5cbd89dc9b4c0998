"""amir-pl: automatic musical instrument recognition with Segal's (2016) ConvNet, in Lightning + Hydra."""

__version__ = "0.1.0"
