"""Decoding audio bytes, with a named reason for every way a file can be bad."""

from __future__ import annotations

import io
import os
import re
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf

REASONS = {
    "missing": "the file does not exist or could not be fetched",
    "not_a_file": "the path is not a regular file (a directory, FIFO or device)",
    "too_large": "the file is larger than max_file_mb (raise it to read such files)",
    "unsupported_scheme": "no filesystem for the URI's scheme (unknown, or its package, "
    "e.g. gcsfs for gs://, is not installed)",
    "empty_file": "the file has 0 bytes",
    "unreadable": "libsndfile cannot decode it (unknown format, truncated, corrupt)",
    "zero_sample_rate": "the header declares a sample rate of 0",
    "no_samples": "it decodes to 0 samples",
    "non_finite": "it contains NaN or infinite samples",
    "non_finite_features": "its features are not finite (e.g. samples far outside [-1, 1])",
    "bad_segment": "the manifest's start_s/end_s lie outside the audio",
    "internal": "an unexpected error while featurizing (see detail)",
}
"""Error codes written to the errors table's ``reason`` column, with their meaning."""


class AudioError(Exception):
    """A clip that cannot be featurized; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode(data: bytes | os.PathLike | None) -> tuple[np.ndarray, int]:
    """Decode a whole file, in any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus,
    MP3, AIFF, ...): :func:`open_audio` then every block of :func:`read_blocks`.

    Args:
        data: the file's bytes or a local path; None when it could not be read.

    Returns:
        (samples (n, channels) float32, sample_rate_hz).

    Raises:
        AudioError: with the reason the clip is unusable.
    """
    with open_audio(data) as f:
        blocks = list(read_blocks(f, 0, f.frames))
        rate = int(f.samplerate)
    if not blocks:
        raise AudioError("no_samples", f"0 samples at {rate} Hz")
    return np.concatenate(blocks), rate


def open_audio(source: bytes | os.PathLike | BinaryIO) -> sf.SoundFile:
    """An open decoder of a file's bytes, a local file or a seekable binary file object
    (e.g. a remote file opened by fsspec); a file is read in blocks, never whole.

    Raises:
        AudioError: empty_file, unreadable, zero_sample_rate or no_samples (the checks of
            :func:`decode` that need no samples; non-finite samples are found while reading).
    """
    if isinstance(source, os.PathLike):
        if os.path.getsize(source) == 0:
            raise AudioError("empty_file", "the file has 0 bytes")
        target = os.fspath(source)
    elif hasattr(source, "read"):
        target = source
    else:
        if source is None:
            raise AudioError("missing", "no bytes could be read for this path")
        if len(source) == 0:
            raise AudioError("empty_file", "the file has 0 bytes")
        target = io.BytesIO(source)
    try:
        f = sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        head = source if isinstance(source, bytes) else _head(target)
        if _wav_header_rate(head) == 0:
            raise AudioError("zero_sample_rate", "WAV header declares 0 Hz") from err
        message = re.sub(r"^Error opening <[^>]*>: ", "", str(err))
        message = re.sub(r"^Error opening '[^']*': ", "", message)
        raise AudioError("unreadable", message) from err
    if f.samplerate <= 0:
        f.close()
        raise AudioError("zero_sample_rate", f"sample rate {f.samplerate}")
    if f.frames == 0:
        f.close()
        raise AudioError("no_samples", f"0 samples at {f.samplerate} Hz")
    return f


def read_blocks(f: sf.SoundFile, start: int, stop: int, block: int = 1 << 20):
    """(n, channels) float32 blocks of frames start..stop of an open file, in order.

    Raises:
        AudioError: non_finite for NaN / infinite samples, unreadable when decoding fails.
    """
    try:
        f.seek(start)
        while start < stop:
            x = f.read(min(block, stop - start), dtype="float32", always_2d=True)
            if not len(x):
                return
            if not np.isfinite(x.sum()) and not np.isfinite(x).all():  # sum: one pass
                bad = int((~np.isfinite(x)).sum())
                raise AudioError(
                    "non_finite", f"{bad} NaN/inf samples in the {len(x)} frames at {start}"
                )
            start += len(x)
            yield x
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError("unreadable", f"decoding failed at frame {start}: {err}") from err


def _head(target: str | BinaryIO, size: int = 1 << 16) -> bytes:
    if not isinstance(target, str):
        target.seek(0)
        return target.read(size)
    with open(target, "rb") as f:
        return f.read(size)


def _wav_header_rate(data: bytes) -> int | None:
    """The sample rate field of a RIFF/WAVE ``fmt`` chunk, or None if not a WAV."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 16 <= len(data):
            return struct.unpack("<I", data[pos + 12 : pos + 16])[0]
        pos += 8 + size + (size & 1)
    return None
