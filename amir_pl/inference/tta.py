"""Test-time augmentation (``tta_semitones``): each window also scored with its mel axis warped by a
few semitones, the training augmentation's pitch warp with fixed amounts, and the scores averaged.
amir-predict and amir-evaluate-recordings (through their scorer) and amir-export share it."""

from __future__ import annotations

import torch

from amir_pl.core.errors import AmirError
from amir_pl.training.augment import from_db, to_db, warp_mel_axis


def tta_warps(option, modules) -> tuple[float, ...]:
    """``tta_semitones``: ``auto`` gives -p, -p/2, 0, p/2, p for checkpoints trained with pitch warping up
    to +-p semitones (``augment.pitch_semitones``; the smallest p of an ensemble's members), and no
    warps for checkpoints trained without it; a list gives its own. ``()`` means off."""
    if option is None:
        return ()
    if isinstance(option, str):
        if option != "auto":
            raise AmirError(
                f"tta_semitones={option}: expected auto, or a list of semitones such as [-2,-1,0,1,2] ([] off)"
            )
        trained = [float((m.hparams.get("augment") or {}).get("pitch_semitones") or 0.0) for m in modules]
        bound = min(trained, default=0.0)
        return () if bound <= 0 else (-bound, -bound / 2, 0.0, bound / 2, bound)
    try:
        warps = tuple(float(value) for value in option)
    except (TypeError, ValueError):
        raise AmirError(f"tta_semitones={option}: expected auto, or a list of numbers of semitones ([] off)") from None
    if any(abs(value) > 12 for value in warps):
        raise AmirError(
            f"tta_semitones={list(warps)}: warps beyond an octave push the bands off the mel axis; "
            "give warps within -12..12 semitones (auto: the checkpoint's training range)"
        )
    return () if warps in ((), (0.0,)) else warps


def warped_views(mels: torch.Tensor, centres: torch.Tensor, warps, scale: str) -> list[torch.Tensor]:
    """Windows (batch, n_mels, frames) as stored (``scale`` power or db), once per warp of ``warps``,
    each with its mel axis warped by that many semitones (0, or no warps: the windows themselves)."""
    views = []
    for semitones in warps or (0.0,):
        if semitones == 0:
            views.append(mels)
            continue
        shift = torch.full((mels.shape[0], 1), float(semitones), device=mels.device)
        views.append(from_db(warp_mel_axis(to_db(mels, scale), centres, shift), scale).to(mels.dtype))
    return views
