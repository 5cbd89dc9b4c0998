"""Render the `stk` family's sample library (conf/sources/stk.yaml): single notes of the Synthesis
ToolKit's physical and FM models (Debian `stk`: its `stk-demo` reads a SKINI score and writes a WAV),
every 3 semitones over each instrument's range, soft and hard, as <OUT>/<instrument>/<note>_<layer>.flac.

    python scripts/stk_notes.py data/sources/stk        # what `make sources` runs when stk-demo is installed

Deterministic (the models are; no random draw); a note the model leaves silent is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

RATE = 44100
SECONDS = 4.0  # held 3.5 s, then 0.5 s of release
LAYERS = ("soft", "hard")
NAMES = ("C", "Cs", "D", "Ds", "E", "F", "Fs", "G", "Gs", "A", "As", "B")
# folder -> (STK instrument, lowest key, highest key, NoteOn velocity of each layer: the loud one below
# where the 16-bit WAV that stk-demo writes would clip)
INSTRUMENTS = {
    "violin": ("Bowed", 55, 96, (72, 118)),
    "cello": ("Bowed", 36, 76, (72, 118)),
    "flute": ("Flute", 60, 96, (72, 118)),
    "saxophone": ("Saxofony", 49, 84, (40, 64)),
    "trumpet": ("Brass", 72, 90, (72, 118)),  # stk-demo's Brass is silent below C5
    "organ": ("BeeThree", 36, 90, (72, 118)),
    "guitar": ("Plucked", 40, 79, (72, 118)),
    "bass": ("Plucked", 28, 55, (72, 118)),
    "voice-fm": ("FMVoices", 48, 79, (64, 96)),
    "voice-formant": ("VoicForm", 48, 79, (72, 118)),
}


def note_name(key: int) -> str:
    return f"{NAMES[key % 12]}{key // 12 - 1}"


def render_note(program: str, key: int, velocity: int, work: Path) -> np.ndarray:
    score = work / "note.ski"
    score.write_text(f"NoteOn 0.0 1 {key} {velocity}\nNoteOff {SECONDS - 0.5} 1 {key} 0\nExitProgram 0.5 1\n")
    wav = work / "note.wav"
    subprocess.run(
        ["stk-demo", program, "-s", str(RATE), "-n", "1", "-ow", str(wav), "-if", str(score)],
        check=True,
        capture_output=True,
    )
    audio, _ = soundfile.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)[: round(SECONDS * RATE)]
    return audio - audio.mean()  # some models (FM, plucked) sit on a DC offset


def main(output: Path) -> None:
    if shutil.which("stk-demo") is None:
        sys.exit("stk-demo not found: apt-get install stk")
    tmp_root = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp_root, ignore_errors=True)
    written = skipped = 0
    with tempfile.TemporaryDirectory() as scratch:
        for folder, (program, low, high, velocities) in INSTRUMENTS.items():
            (tmp_root / folder).mkdir(parents=True)
            for key in range(low, high + 1, 3):
                for layer, velocity in zip(LAYERS, velocities, strict=True):
                    audio = render_note(program, key, velocity, Path(scratch))
                    if np.sqrt(np.mean(audio**2)) < 1e-3:
                        skipped += 1
                        continue
                    path = tmp_root / folder / f"{note_name(key)}_{layer}.flac"
                    soundfile.write(str(path), audio, RATE, subtype="PCM_16")
                    written += 1
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp_root, output)  # complete or not there: an interrupted run leaves only <OUT>.partial
    print(f"stk notes: {written} written, {skipped} silent skipped, in {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/sources/stk"))
