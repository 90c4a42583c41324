"""Deliberately broken media files for the preprocess failure tests: a clip cut short, a text file and an
empty file named as media."""

from pathlib import Path


def make_truncated(src, dst, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``src`` to ``dst`` (an mp4 cut short, as by a failed download)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def make_text_file(path, text: str = "this is not a video\n") -> Path:
    """A text file, typically named ``*.mp4`` to stand for a mislabelled download."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def make_empty_file(path) -> Path:
    """A zero-length file."""
    path = Path(path)
    path.write_bytes(b"")
    return path
