"""The Hydra configs, shipped in the wheel as the package ``amir_pl.conf`` (read as pkg://amir_pl.conf)."""
