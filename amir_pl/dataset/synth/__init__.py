"""amir-synth's built-in dataset: phrases (what is played), renderers (soundfonts), render (clips, files)."""

from amir_pl.dataset.synth.phrases import INSTRUMENTS, compose_phrase
from amir_pl.dataset.synth.render import synth
from amir_pl.dataset.synth.renderers import available_renderer, fallback_font

__all__ = ["INSTRUMENTS", "available_renderer", "compose_phrase", "fallback_font", "synth"]
