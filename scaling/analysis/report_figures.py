"""The report's figures: each drawn and saved as PNG and SVG, a failure turned into a note."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class FigureWriter:
    """Saves the report's figures into ``out_dir`` and collects the notes of the report."""

    def __init__(self, out_dir: Path, formats: tuple[str, ...]):
        self.out = out_dir
        self.formats = formats
        self.figures: list[Path] = []
        self.notes: list[str] = []

    def figure(self, name: str, make) -> str | None:
        """Draw and save one figure; a failure becomes a note, not a traceback."""
        # matplotlib loads with the first figure
        from scaling.analysis.plots.style import save

        try:
            fig = make()
        except Exception as exc:  # one broken figure must not cost the others
            log.debug("figure %s failed", name, exc_info=True)
            self.notes.append(f"figure '{name}' could not be drawn: {exc}")
            return None
        paths = save(fig, self.out, name, self.formats)
        self.figures.extend(paths)
        return paths[0].name
