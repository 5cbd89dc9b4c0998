"""In-process soundfont renderers: libfluidsynth through pyfluidsynth, or tinysoundfont (pip) where
libfluidsynth is missing. A fresh synth for every clip, so a clip's audio depends on its seed alone."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from pathlib import Path

import numpy as np

from amir_pl.core.errors import AmirError

log = logging.getLogger(__name__)


class FluidSynthRenderer:
    """libfluidsynth through pyfluidsynth, float output, a fresh synth for every clip.

    A reused synth is not history-free: a voice keeps filter state from the note it
    last played, so the same clip rendered after different clips differed in its
    first milliseconds. A fresh synth per clip makes every clip depend on its seed
    alone and nothing bleed; a holder synth keeps each font loaded, so fluidsynth's
    sample cache makes the per-clip load cheap (docs/performance.md, "Measurements behind the code").
    """

    name = "fluidsynth"

    def __init__(self, sample_rate: int):
        import fluidsynth

        self._fluidsynth = fluidsynth
        self.sample_rate = sample_rate
        self.holder = fluidsynth.Synth(samplerate=float(sample_rate))
        self.held: dict[str, int] = {}
        self.synth = None
        self._write = fluidsynth._fl.fluid_synth_write_float
        self._write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        self._set_gen = fluidsynth._fl.fluid_synth_set_gen
        self._set_gen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_float]
        self._set_gen.restype = ctypes.c_int

    def _hold(self, path: str) -> int:
        if path not in self.held:
            sfid = self.holder.sfload(path)
            if sfid < 0:
                raise AmirError(f"fluidsynth could not load the soundfont {path}")
            self.held[path] = sfid
        return self.held[path]

    def has_preset(self, font: str, bank: int, program: int) -> bool:
        return self.holder.sfpreset_name(self._hold(font), bank, program) is not None

    def select(self, font: str, bank: int, program: int, channel: int) -> None:
        self._hold(font)
        self.reset()
        self.synth = self._fluidsynth.Synth(gain=0.4, samplerate=float(self.sample_rate))
        self.synth.program_select(channel, self.synth.sfload(font), bank, program)

    def effects(self, reverb: float, chorus: float) -> None:
        self.synth.set_reverb(roomsize=0.2 + 0.7 * reverb, damping=0.4, width=0.8, level=reverb)
        self.synth.set_chorus(nr=3, level=chorus * 2.0, speed=0.3, depth=8.0, type=0)

    def articulate(self, channel: int, offsets: dict[int, float]) -> None:
        """Add ``offsets`` to the channel's SoundFont generators (by number: 34 the attack time, ...), as
        an NRPN would: every note played after this sounds with them."""
        for generator, value in offsets.items():
            if self._set_gen(self.synth.synth, channel, generator, value) != 0:
                raise AmirError(f"fluidsynth refused generator {generator} = {value}")

    def noteon(self, channel, key, velocity):
        self.synth.noteon(channel, key, velocity)

    def noteoff(self, channel, key):
        self.synth.noteoff(channel, key)

    def render(self, frames: int) -> np.ndarray:
        left, right = np.zeros(frames, np.float32), np.zeros(frames, np.float32)
        if frames:
            self._write(self.synth.synth, frames, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def reset(self) -> None:
        if self.synth is not None:
            self.synth.delete()
            self.synth = None


class TinySoundFontRenderer:
    """tinysoundfont (pip): the fallback where libfluidsynth is missing; no reverb or chorus.

    Like the fluidsynth renderer, a fresh synth per clip (fonts kept in memory as bytes).
    """

    name = "tinysoundfont"

    def __init__(self, sample_rate: int):
        import tinysoundfont

        self._tinysoundfont = tinysoundfont
        self.sample_rate = sample_rate
        self.font_bytes: dict[str, bytes] = {}
        self.probes: dict[str, tuple] = {}  # font -> (synth, sfid), to look presets up
        self.synth = None

    def _synth_with(self, font: str):
        if font not in self.font_bytes:
            self.font_bytes[font] = Path(font).read_bytes()
        synth = self._tinysoundfont.Synth(samplerate=self.sample_rate, gain=-6.0)
        return synth, synth.sfload(self.font_bytes[font])

    def has_preset(self, font: str, bank: int, program: int) -> bool:
        if font not in self.probes:
            self.probes[font] = self._synth_with(font)
        synth, sfid = self.probes[font]
        return synth.sfpreset_name(sfid, bank, program) is not None

    def select(self, font: str, bank: int, program: int, channel: int) -> None:
        self.synth, sfid = self._synth_with(font)
        self.synth.program_select(channel, sfid, bank, program, is_drums=bank == 128)

    def effects(self, reverb: float, chorus: float) -> None:
        pass

    def noteon(self, channel, key, velocity):
        self.synth.noteon(channel, key, velocity)

    def noteoff(self, channel, key):
        self.synth.noteoff(channel, key)

    def render(self, frames: int) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        stereo = np.frombuffer(self.synth.generate(frames), dtype=np.float32).reshape(-1, 2)
        return (0.5 * (stereo[:, 0] + stereo[:, 1])).astype(np.float32)

    def reset(self) -> None:
        self.synth = None


def available_renderer(choice: str) -> str:
    """'fluidsynth' or 'tinysoundfont' for ``choice`` ('auto' prefers fluidsynth)."""
    has_fluid = _can_import_fluidsynth()
    has_tiny = importlib.util.find_spec("tinysoundfont") is not None
    if choice == "fluidsynth" or (choice == "auto" and has_fluid):
        if not has_fluid:
            raise AmirError(
                "renderer=fluidsynth: pyfluidsynth or libfluidsynth3 is missing; "
                "apt-get install libfluidsynth3 && pip install pyfluidsynth, or renderer=tinysoundfont"
            )
        return "fluidsynth"
    if choice in ("auto", "tinysoundfont"):
        if not has_tiny:
            raise AmirError(
                "no renderer: install libfluidsynth3 + pyfluidsynth, or pip install --no-deps tinysoundfont"
            )
        if choice == "auto":
            log.warning("libfluidsynth is missing: rendering with the tinysoundfont fallback (no reverb/chorus)")
        return "tinysoundfont"
    raise AmirError(f"renderer={choice!r}: expected auto, fluidsynth or tinysoundfont")


def _can_import_fluidsynth() -> bool:
    try:
        import fluidsynth  # noqa: F401  (raises ImportError when libfluidsynth is missing)
    except (ImportError, OSError):
        return False
    return True


def fallback_font() -> str | None:
    """The TimGM6mb.sf2 that the pretty_midi wheel ships (install it with --no-deps)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    return str(path) if path.is_file() else None
