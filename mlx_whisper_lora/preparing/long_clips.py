"""`lora --train` given clips longer than a window: each is cut into windows the way `prepare` cuts a
recording (its text aligned to the audio with a Whisper model's word timestamps, windows closed at pauses,
each with its timed segments and the text before it) instead of being skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional

from ..data.manifests import Utterance
from ..errors import UserError

FOLDER = "long_clips"  # under the adapter folder: the windows' audio, kept while the adapters are


def file_name(utterance_id: str, number: int) -> str:
    """A file name for a clip: its id's safe characters, numbered so that two ids never share one."""
    return f"{number:05d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', utterance_id)[:60]}"


def split_long_clips(clips: List[Utterance], aligner: str, folder: Path, limit: float, language: Optional[str],
                     log: Callable, progress: bool = True) -> List[Utterance]:
    """Windows of at most `limit` seconds cut from `clips`, their audio written under `folder`; a clip that
    cannot be aligned is named in one line and left out. `aligner`: the model whose word timestamps align."""
    import soundfile as sf

    from ..load import default_inference_backend, load_for_inference
    from .recordings import Recording
    from .recording import prepare_recording

    folder.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(aligner, None, backend=default_inference_backend())
    windows: List[Utterance] = []
    failed = 0
    for number, clip in enumerate(clips):
        name = file_name(clip.id or "clip", number)
        if isinstance(clip.audio, str):
            audio = Path(clip.audio)
        else:  # samples or encoded bytes of a dataset row: a file for the long-audio reader
            audio = folder / "source" / f"{name}.wav"
            audio.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(audio), clip.load(), 16000)
        try:
            result = prepare_recording(Recording(name, audio, text=clip.text, language=clip.language), model, folder,
                                       clip.language or language, progress, limit)
        except UserError as e:
            failed += 1
            log(f"skipped {clip.id} ({clip.duration:.0f} s): {e}")
            continue
        for row in result.rows:
            windows.append(Utterance(
                audio=str(folder / row["audio"]), text=row["text"], language=clip.language or row["language"],
                duration=row["duration"], id=f"{clip.id}@{row['start']:.2f}", segments=row["segments"],
                previous_text=row["previous_text"] or None, group=f"recording:{clip.id}"))
    seconds = sum(float(c.duration or 0) for c in clips)
    kept = sum(float(w.duration) for w in windows)
    log(f"long clips: {len(clips)} training clips longer than {limit:g} s ({seconds / 60:.1f} min) cut into "
        f"{len(windows)} windows at pauses, as prepare cuts recordings (text aligned with {aligner}'s word "
        f"timestamps); {kept / 60:.1f} min kept" + (f", {failed} clips could not be aligned" if failed else "") +
        ". To check or reuse the cut: python -m mlx_whisper_lora.prepare")
    return windows
