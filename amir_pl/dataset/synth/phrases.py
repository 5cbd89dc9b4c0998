"""Solo phrases as MIDI events: seeded random scales, arpeggios, melodies, riffs, chords, strums and
drum grooves, in each instrument's register, with tempo, dynamics and articulation varied."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DRUM_CHANNEL = 9  # MIDI channel 10
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PENTATONIC, BLUES = (0, 2, 4, 7, 9), (0, 3, 5, 6, 7, 10)
SCALES = (MAJOR, MINOR, PENTATONIC, BLUES)
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 11), (0, 3, 7, 10), (0, 4, 7, 10), (0, 5, 7), (0, 7, 12))
# GM percussion keys
KICK, SNARE, CLOSED_HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 42, 46, 51, 49
TOMS = (41, 43, 45, 47, 48, 50)


@dataclass(frozen=True)
class Instrument:
    programs: tuple[int, ...]
    low: int  # MIDI key range used
    high: int
    styles: tuple[str, ...]  # phrase kinds drawn from
    bank: int = 0


INSTRUMENTS: dict[str, Instrument] = {
    "electric_bass": Instrument((33, 34, 35), 28, 55, ("scale", "arpeggio", "melody", "riff")),
    "cello": Instrument((42,), 36, 69, ("scale", "arpeggio", "melody")),
    "drums": Instrument((0, 8, 16, 24, 25, 32, 40), 35, 81, ("groove", "fill"), bank=128),
    "flute": Instrument((73,), 60, 93, ("scale", "arpeggio", "melody")),
    "acoustic_guitar": Instrument((24, 25), 40, 76, ("strum", "arpeggio", "melody", "chords")),
    "electric_guitar": Instrument((26, 27, 28, 29, 30), 40, 84, ("strum", "riff", "melody", "chords")),
    "organ": Instrument((16, 17, 18, 19), 36, 84, ("chords", "melody", "arpeggio")),
    "piano": Instrument((0, 1, 2, 3), 33, 96, ("chords", "melody", "arpeggio", "scale")),
    "saxophone": Instrument((64, 65, 66, 67), 49, 80, ("scale", "melody", "riff")),
    "trumpet": Instrument((56,), 54, 82, ("scale", "arpeggio", "melody")),
    "violin": Instrument((40,), 55, 93, ("scale", "arpeggio", "melody")),
    "vocals": Instrument((52, 53), 48, 79, ("melody", "scale")),
}


@dataclass
class Phrase:
    """MIDI events of one clip: (seconds, 'on'|'off', key, velocity)."""

    style: str
    tempo: float
    events: list[tuple[float, str, int, int]] = field(default_factory=list)
    tonality: tuple[int, int] | None = None  # (root pitch class 0-11, index into SCALES); None: drums

    def note(self, start: float, length: float, key: int, velocity: int) -> None:
        self.events.append((start, "on", key, velocity))
        self.events.append((start + length, "off", key, 0))

    def notes(self) -> list[tuple[float, float, int, int]]:
        """(start, end, key, velocity) of every note, in the order played."""
        pairs = zip(self.events[0::2], self.events[1::2], strict=True)
        return sorted((on[0], off[0], on[2], on[3]) for on, off in pairs)


def compose_phrase(
    instrument: Instrument,
    seconds: float,
    rng: np.random.Generator,
    tempo: float | None = None,
    tonality: tuple[int, int] | None = None,
) -> Phrase:
    """A seeded random solo phrase: tempo, dynamics, articulation and register vary. ``tempo`` and
    ``tonality`` (another phrase's), where given, are kept, so that parts played together share them."""
    style = str(rng.choice(instrument.styles))
    drawn_tempo = float(rng.uniform(70, 160))
    tempo = drawn_tempo if tempo is None else float(tempo)
    beat = 60.0 / tempo
    phrase = Phrase(style, tempo)
    start = float(rng.uniform(0.0, 0.25))
    velocity = int(rng.integers(50, 118))
    articulation = float(rng.choice([0.35, 0.7, 0.95]))  # staccato, normal, legato
    if style in ("groove", "fill"):
        _drums(phrase, style, start, beat, seconds, velocity, rng)
        return phrase
    span = instrument.high - instrument.low
    centre = int(rng.integers(instrument.low + span // 4, instrument.high - span // 4 + 1))
    scale_index = int(rng.integers(len(SCALES)))
    root = centre - int(rng.integers(0, 12))
    if tonality is not None:  # the given key: its root pitch class, at or below the centre
        scale_index = tonality[1]
        root = centre - (centre - tonality[0]) % 12
    scale = SCALES[scale_index]
    phrase.tonality = (root % 12, scale_index)

    def fit(key: int) -> int:
        while key > instrument.high:
            key -= 12
        while key < instrument.low:
            key += 12
        return key

    def scale_key(degree: int) -> int:
        octave, step = divmod(degree, len(scale))
        return fit(root + 12 * octave + scale[step])

    def jitter(value: int) -> int:
        return int(np.clip(value + rng.integers(-12, 13), 20, 127))

    t = start
    if style in ("scale", "arpeggio", "melody", "riff"):
        step = beat * float(rng.choice([0.25, 0.5, 1.0] if style != "melody" else [0.5, 1.0, 1.5]))
        degree = int(rng.integers(0, len(scale)))
        direction = int(rng.choice([-1, 1]))
        riff = [int(rng.integers(-3, 4)) for _ in range(int(rng.integers(3, 6)))]
        i = 0
        while t < seconds:
            if style == "scale":
                degree += direction
                if rng.random() < 0.15:
                    direction = -direction
            elif style == "arpeggio":
                degree += 2 * direction
                if abs(degree) > 2 * len(scale):
                    direction = -direction
            elif style == "riff":
                degree = riff[i % len(riff)]
            else:
                degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            length = step * (float(rng.choice([1, 1, 2])) if style == "melody" else 1.0)
            phrase.note(t, length * articulation, scale_key(degree), jitter(velocity))
            t += length
            i += 1
    else:  # chords and strums, for polyphonic instruments
        while t < seconds:
            chord = CHORDS[int(rng.integers(len(CHORDS)))]
            base = scale_key(int(rng.integers(0, len(scale))))
            length = beat * float(rng.choice([1.0, 2.0]))
            offset = 0.0
            strum_gap = float(rng.uniform(0.01, 0.04)) if style == "strum" else 0.0
            keys = sorted({fit(base + interval) for interval in chord})
            if style == "strum" and rng.random() < 0.5:
                keys = keys[::-1]  # up-strum
            for key in keys:
                phrase.note(t + offset, length * articulation, key, jitter(velocity))
                offset += strum_gap
            t += length
    return phrase


def _drums(phrase: Phrase, style: str, t: float, beat: float, seconds: float, velocity: int, rng) -> None:
    step = beat / 2  # eighth notes
    hat = int(rng.choice([CLOSED_HAT, CLOSED_HAT, OPEN_HAT, RIDE]))
    kicks = {0, 4} | ({3} if rng.random() < 0.5 else set()) | ({6} if rng.random() < 0.3 else set())
    i = 0
    if style == "fill":
        phrase.note(t, 0.3, CRASH, velocity)
    while t < seconds:
        position = i % 8
        if style == "groove" or i < 4:
            phrase.note(t, step, hat, int(np.clip(velocity - 20 + 10 * (position % 2 == 0), 20, 127)))
            if position in kicks:
                phrase.note(t, step, KICK, velocity)
            if position in (2, 6):
                phrase.note(t, step, SNARE, velocity)
        else:  # a fill: snare and toms in sixteenths
            for k in range(2):
                key = int(rng.choice((SNARE, *TOMS)))
                phrase.note(t + k * step / 2, step / 2, key, int(np.clip(velocity + rng.integers(-15, 10), 20, 127)))
        t += step
        i += 1
