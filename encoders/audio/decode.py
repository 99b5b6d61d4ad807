"""The one place that touches untrusted audio bytes.

`decode_audio` turns client bytes into 16 kHz mono float32 samples, or raises `InvalidInput`
with a reason a human can act on; `probe_audio` runs the same checks without decoding (FFmpeg's
stream-info pass may still decode a few packets to learn the parameters).
Order of checks, cheapest first: empty, byte cap, container sniffed from magic bytes against
the allow-list (and, for WAV, rate and channels read from the raw header), then FFmpeg (the
one the PyAV wheel ships) opens the bytes with that demuxer forced, and we check the audio
stream's codec, sample rate, channels and declared duration; only then do we decode,
counting decoded seconds and stopping as soon as they pass the cap, so a header that lies
(or says nothing) cannot make us decode hours.

FFmpeg never probes: the demuxer is the one we sniffed, `format_whitelist` repeats the
allow-list inside FFmpeg, and nested opens (playlists, references to other files) are
refused by both `protocol_whitelist` and an `io_open` that always fails. Input is only ever
an in-memory `io.BytesIO`, never a path or URL.

Channels are averaged by us, not by swresample: its default mono matrix scales by channel
position (a 6-channel WAV of a constant 0.49 came out at 1.67), and it cannot build a matrix
for some unnamed layouts (9 or 32 channels: EINVAL). We never call `to_ndarray` on a planar
frame either: PyAV 18 reads past the plane pointers of planar frames with 8+ channels and
segfaults. So frames are resampled to packed float32 at 16 kHz in their own layout, then
averaged. Memory is bounded by the duration cap: 64 KB per second of audio (0.7 GB at 3 h).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import av
import numpy as np

from encoders.common.errors import InvalidInput

SAMPLE_RATE = 16_000  # of `DecodedAudio.samples`
_MP4 = "mov,mp4,m4a,3gp,3g2,mj2"
_MKV = "matroska,webm"
# FFmpeg demuxer name -> name a person knows.
_LABELS = {
    "wav": "WAV",
    "mp3": "MP3",
    "flac": "FLAC",
    "ogg": "Ogg",
    _MP4: "MP4/M4A/MOV",
    _MKV: "Matroska/WebM",
    "aac": "AAC (ADTS)",
    "aiff": "AIFF",
    "caf": "CAF",
}
# Formats we will not open, named so the client hears what it sent rather than "unknown".
_OTHER_SIGNATURES = (
    (0, b"\x30\x26\xb2\x75", "ASF (WMA/WMV)"),
    (0, b"FLV", "FLV video"),
    (0, b"MThd", "MIDI"),
    (0, b"#!AMR", "AMR"),
    (0, b"MAC ", "Monkey's Audio"),
    (0, b"wvpk", "WavPack"),
    (0, b".snd", "Sun AU"),
    (8, b"AVI ", "AVI video"),
    (8, b"WEBP", "WebP image"),
    (0, b"\x89PNG", "PNG image"),
    (0, b"\xff\xd8\xff", "JPEG image"),
    (0, b"GIF8", "GIF image"),
    (0, b"%PDF", "PDF"),
)


@dataclass(frozen=True)
class AudioLimits:
    # Largest upload accepted, in bytes; checked before any parsing.
    max_bytes: int = 100 * 1024 * 1024
    # Longest recording accepted, in seconds: checked against the header's duration before
    # decoding, and against the decoded duration while decoding. 3 h at 16 kHz is 0.7 GB.
    max_duration_s: float = 3 * 3600
    # Sample rates accepted, from the header and from every decoded frame. 8 kHz is the
    # telephone band; 384 kHz is the highest rate studio gear records.
    min_sample_rate: int = 4_000
    max_sample_rate: int = 384_000
    # Most channels accepted (up to 64, where PyAV's filter graph still resamples them).
    max_channels: int = 32
    # FFmpeg demuxer names (as sniffed from the bytes, never the caller's file name).
    allowed_formats: tuple[str, ...] = ("wav", "mp3", "flac", "ogg", _MP4, _MKV, "aac", "aiff", "caf")
    # FFmpeg codec names, shell-style patterns allowed ("pcm_*": every PCM flavour).
    allowed_codecs: tuple[str, ...] = ("pcm_*", "mp3", "flac", "vorbis", "opus", "aac", "alac")

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_duration_s, self.min_sample_rate, self.max_channels) <= 0:
            raise ValueError(f"audio limits must be positive: {self}")
        if self.min_sample_rate > self.max_sample_rate or self.max_channels > 64:
            raise ValueError(f"audio limits out of range: {self}")
        unknown = [f for f in self.allowed_formats if f not in _LABELS]
        if unknown:
            raise ValueError(f"allowed_formats has names this module cannot sniff: {unknown}")


@dataclass(frozen=True)
class AudioInfo:
    container: str  # FFmpeg demuxer name, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # FFmpeg codec name, e.g. "pcm_s16le", "opus"
    sample_rate: int  # of the source, from its header
    channels: int  # of the source, from its header
    declared_duration_s: float | None  # from the header; None when it does not say
    sha256: str  # hex digest of the original bytes


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, 1-D, mono (channels averaged), SAMPLE_RATE Hz
    duration_s: float  # len(samples) / SAMPLE_RATE
    source_sample_rate: int
    source_channels: int
    container: str  # as in AudioInfo
    codec: str  # as in AudioInfo
    sha256: str  # hex digest of the original bytes


def sniff_container(data: bytes) -> str | None:
    """FFmpeg demuxer name for `data` from its magic bytes alone, or None. Parses nothing."""
    start = _after_id3(data)
    head = bytes(data[start : start + 12])
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    for magic, name in ((b"fLaC", "flac"), (b"OggS", "ogg"), (b"caff", "caf"), (b"\x1a\x45\xdf\xa3", _MKV)):
        if head.startswith(magic):
            return name
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return _MP4
    if len(head) >= 3 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # 12-bit sync, layer 00: ADTS
    if (
        len(head) >= 3
        and head[0] == 0xFF
        and head[1] & 0xE0 == 0xE0
        and head[1] & 0x06
        and head[2] >> 4 != 15
        and (head[2] >> 2) & 3 != 3
    ):
        return "mp3"  # 11-bit sync, a layer, valid bit rate and sample rate indexes
    return "mp3" if start and head else None  # an ID3 tag is all but always an MP3


def _after_id3(data: bytes) -> int:
    """Offset past any ID3v2 tags (FFmpeg skips them before any demuxer looks)."""
    pos = 0
    while data[pos : pos + 3] == b"ID3" and len(data) >= pos + 10:
        size = data[pos + 6] << 21 | data[pos + 7] << 14 | data[pos + 8] << 7 | data[pos + 9]
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    return pos


def probe_audio(data: bytes, limits: AudioLimits = AudioLimits(), *, field: str = "audio") -> AudioInfo:
    """Check untrusted audio bytes from their headers alone; decode nothing."""
    with _opened(data, limits, field) as (_container, _stream, info):
        return info


def decode_audio(data: bytes, limits: AudioLimits = AudioLimits(), *, field: str = "audio") -> DecodedAudio:
    """Validate and decode untrusted audio bytes to 16 kHz mono float32, or raise
    `InvalidInput` saying why not."""
    with _opened(data, limits, field) as (container, stream, info):
        samples = _decode(container, stream, info, limits, field)
    return DecodedAudio(
        samples, len(samples) / SAMPLE_RATE, info.sample_rate, info.channels, info.container, info.codec, info.sha256
    )


@contextmanager
def _opened(
    data: bytes, limits: AudioLimits, field: str
) -> Iterator[tuple[av.container.InputContainer, av.AudioStream, AudioInfo]]:
    _check_byte_size(data, limits, field)
    fmt = _check_format(data, limits, field)
    label = _LABELS[fmt]
    if fmt == "wav" and (header := _wav_fmt_chunk(data)) is not None:
        _check_rate_and_channels(*header, label, limits, field)
    with (
        _av_errors(label, field),
        av.open(
            io.BytesIO(data),
            "r",
            format=fmt,
            metadata_errors="replace",
            io_open=partial(_refuse_nested, field=field),
            container_options={"format_whitelist": ",".join(limits.allowed_formats), "protocol_whitelist": "none"},
        ) as container,
    ):
        if container.format.name not in limits.allowed_formats:  # forced above; belt and braces
            raise InvalidInput(
                f"FFmpeg opened the {label} file as {container.format.name}, which is not accepted", field=field
            )
        stream = _audio_stream(container, label, field)
        codec = _check_codec(stream, label, limits, field)
        ctx = stream.codec_context
        _check_rate_and_channels(ctx.sample_rate, ctx.channels, label, limits, field)
        declared = _declared_duration(container, stream)
        if declared is not None and declared > limits.max_duration_s:
            raise InvalidInput(
                f"the {label} header declares {_secs(declared)} of audio; the limit is "
                f"{_secs(limits.max_duration_s)}; split the recording",
                field=field,
            )
        digest = hashlib.sha256(data).hexdigest()
        yield container, stream, AudioInfo(fmt, codec, ctx.sample_rate, ctx.channels, declared, digest)


def _check_byte_size(data: bytes, limits: AudioLimits, field: str) -> None:
    if len(data) == 0:
        raise InvalidInput("audio is empty (0 bytes); send the file's contents", field=field)
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"audio is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes"
            f"{f' ({limits.max_bytes / 2**20:.4g} MiB)' if limits.max_bytes >= 2**20 else ''}"
            "; trim it or send a compressed format (FLAC, Opus, MP3)",
            field=field,
        )


def _check_format(data: bytes, limits: AudioLimits, field: str) -> str:
    allowed = ", ".join(_LABELS[f] for f in limits.allowed_formats)
    fmt = sniff_container(data)
    if fmt is None:
        other = next((name for at, magic, name in _OTHER_SIGNATURES if data[at : at + len(magic)] == magic), None)
        if other is None and data[:1] == b"\x47" and data[188:189] == b"\x47":
            other = "MPEG-TS video"
        raise InvalidInput(
            f"{other} is not an accepted audio format; convert it to one of: {allowed}"
            if other
            else f"bytes are not audio in any recognised container (they start with "
            f"{bytes(data[:8]).hex(' ')}); send one of: {allowed}",
            field=field,
        )
    if fmt not in limits.allowed_formats:
        raise InvalidInput(
            f"audio container {_LABELS[fmt]} is not accepted; convert it to one of: {allowed}", field=field
        )
    return fmt


def _wav_fmt_chunk(data: bytes) -> tuple[int, int] | None:
    """(sample rate, channels) from a WAV's fmt chunk, read before FFmpeg (which rejects a
    rate above 2**31 as merely "invalid data")."""
    pos = _after_id3(data) + 12
    for _ in range(64):  # chunks before "fmt " are rare; a file with 64 is not audio
        if pos + 16 > len(data):
            return None
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"fmt " and size >= 16:
            channels, rate = struct.unpack_from("<HI", data, pos + 10)
            return rate, channels
        pos += 8 + size + (size & 1)
    return None


def _check_rate_and_channels(rate: int, channels: int, label: str, limits: AudioLimits, field: str) -> None:
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise InvalidInput(
            f"the {label} audio has a sample rate of {rate:,} Hz; accepted rates are "
            f"{limits.min_sample_rate:,} to {limits.max_sample_rate:,} Hz",
            field=field,
        )
    if not 1 <= channels <= limits.max_channels:
        raise InvalidInput(
            f"the {label} audio has {channels} channels; accepted: 1 to "
            f"{limits.max_channels}; mix it down to mono or stereo",
            field=field,
        )


def _refuse_nested(url: str, flags: int, options: dict[str, str], *, field: str) -> None:
    """PyAV's hook for every file a demuxer opens besides ours (playlists, references)."""
    raise InvalidInput(
        f"the file refers to another resource ({url[:80]!r}); send the audio itself as one self-contained file",
        field=field,
    )


def _audio_stream(container: av.container.InputContainer, label: str, field: str) -> av.AudioStream:
    if container.streams.audio:
        return container.streams.audio[0]
    kinds = Counter(s.type for s in container.streams)
    found = ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none"
    raise InvalidInput(
        f"the {label} file has no audio stream; it looks like a video or other container "
        f"(streams: {found}); send a recording with an audio track",
        field=field,
    )


def _check_codec(stream: av.AudioStream, label: str, limits: AudioLimits, field: str) -> str:
    ctx = stream.codec_context
    codec = ctx.codec.canonical_name if ctx is not None and ctx.codec else "unknown"
    if not any(fnmatch.fnmatchcase(codec, pattern) for pattern in limits.allowed_codecs):
        raise InvalidInput(
            f"the {label} file's audio codec {codec} is not accepted; re-encode it as one "
            f"of: {', '.join(limits.allowed_codecs)}",
            field=field,
        )
    return codec


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The longest duration the headers state (stream or container), or None."""
    found = [float(stream.duration * stream.time_base)] if stream.duration and stream.time_base else []
    found += [container.duration / 1_000_000] if container.duration is not None else []
    return max(found) if found and max(found) >= 0 else None


def _decode(
    container: av.container.InputContainer, stream: av.AudioStream, info: AudioInfo, limits: AudioLimits, field: str
) -> np.ndarray:
    label = _LABELS[info.container]
    expected_s = min(info.declared_duration_s or 60.0, limits.max_duration_s)
    out = _Growing(round(expected_s * SAMPLE_RATE), round(limits.max_duration_s * SAMPLE_RATE))
    resampler, setup, decoded_s = None, None, 0.0
    with _av_errors(label, field):
        for frame in container.decode(stream):
            _check_rate_and_channels(
                frame.sample_rate, frame.layout.nb_channels, label, limits, field
            )  # a stream may change mid-way
            decoded_s += frame.samples / frame.sample_rate
            if decoded_s > limits.max_duration_s:
                said = _secs(info.declared_duration_s) if info.declared_duration_s is not None else "no duration"
                raise InvalidInput(
                    f"the {label} audio decodes to more than {_secs(limits.max_duration_s)} "
                    f"(the limit), though its header declares {said}; split the recording",
                    field=field,
                )
            if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
                if resampler is not None:
                    _append_mono(out, resampler.resample(None))
                resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=SAMPLE_RATE)
                setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            frame.pts = None  # timestamps from the file are not trusted to pace resampling
            _append_mono(out, resampler.resample(frame))
        if resampler is not None:
            _append_mono(out, resampler.resample(None))
    if out.size == 0:
        raise InvalidInput(
            f"the {label} file contains no decodable audio; re-export it and send the complete file", field=field
        )
    return out.result()


def _append_mono(out: _Growing, frames: list[av.AudioFrame]) -> None:
    for frame in frames:  # packed float32 (one plane), so to_ndarray is safe at any width
        channels = frame.layout.nb_channels
        packed = frame.to_ndarray().reshape(-1, channels)
        out.append(packed[:, 0] if channels == 1 else packed.mean(axis=1, dtype=np.float32))


class _Growing:
    """A float32 buffer sized from the declared duration, doubling (up to the cap) if the
    header understated it, so honest files cost one allocation and no final copy."""

    def __init__(self, expected: int, cap: int) -> None:
        self._buf = np.empty(expected + SAMPLE_RATE, np.float32)
        self._cap = cap + 2 * SAMPLE_RATE  # resampler flush may add a little past the cap
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + len(chunk)
        if end > len(self._buf):
            grown = np.empty(max(end, min(2 * len(self._buf), self._cap)), np.float32)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : end] = chunk
        self.size = end

    def result(self) -> np.ndarray:
        self._buf.resize(self.size, refcheck=False)  # shrinks in place; nothing else holds it
        return self._buf


def _secs(s: float) -> str:
    if s >= 3600:
        return f"{s:,.0f} s ({s / 3600:.3g} h)"
    return f"{s:,.0f} s ({s / 60:.3g} min)" if s >= 60 else f"{s:.3g} s"


@contextmanager
def _av_errors(label: str, field: str) -> Iterator[None]:
    """Any failure while FFmpeg parses untrusted bytes is the bytes' fault: say so."""
    try:
        yield
    except (InvalidInput, MemoryError):
        raise
    except Exception as e:
        detail = e.strerror if isinstance(e, av.FFmpegError) and e.strerror else str(e)
        raise InvalidInput(
            f"the {label} data is truncated or corrupt and could not be decoded "
            f"({type(e).__name__}: {detail}); re-export the audio and send the complete file",
            field=field,
        ) from e
