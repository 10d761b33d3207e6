"""How the body of an HTTP answer becomes the file's bytes: decoded as its ``Content-Encoding`` says, and bounded.

The real Hub (through CloudFront) gzips ``resolve/`` answers of text files (``config.json``, ``*.index.json``) and API
answers when the client accepts it, as httpx-based clients do by default (huggingface_hub issue #3269). So:

- range requests ask for ``Accept-Encoding: identity`` (:data:`RANGE_ENCODING`): a compressed *range* is meaningless,
  and a range answer that comes compressed anyway is refused;
- whole small files and API answers accept :data:`ACCEPT_ENCODING` (gzip, deflate) and are decoded here.

Why by hand and not with httpx's ``iter_bytes()``: httpx decodes each received chunk whole, so one 64 KiB chunk of a
deflate bomb becomes ~64 MiB in one call, before any size check can run. Here every chunk is decompressed with
``max_length`` (zlib's own bound), output stops one byte past the caller's cap, and an answer that expands more than
:data:`MAX_RATIO` times past its first :data:`RATIO_GRACE` bytes is refused as a compression bomb: a legitimate JSON
answer compresses 5-30x; deflate's ceiling is ~1,032x. Memory stays within the cap and a few chunks.

br and zstd are not asked for: the standard library on Python 3.10-3.13 has no decoder for them, and the optional
packages do not all offer a bounded one. An answer in an encoding that was not asked for is a one-line error naming it.
"""

from __future__ import annotations

import zlib

from ..errors import CkptError

ACCEPT_ENCODING = "gzip, deflate"
RANGE_ENCODING = "identity"
MAX_RATIO = 100  # decoded bytes per wire byte, past RATIO_GRACE, before an answer is called a compression bomb
RATIO_GRACE = 1 << 20  # decoded bytes allowed before the ratio is checked
_STEP = 1 << 16  # decoded bytes produced per decompress call


class DecodeError(CkptError):
    """An answer whose Content-Encoding is unknown, corrupt, or a compression bomb."""

    kind = "network"


def codings(headers) -> list[str]:
    """The content codings of an answer, in the order they were applied (``identity`` dropped)."""
    value = headers.get("content-encoding") or ""
    return [c.strip().lower() for c in value.split(",") if c.strip() and c.strip().lower() != "identity"]


class _Zlib:
    """gzip (RFC 1952) or deflate: zlib-wrapped (RFC 1950) as RFC 9110 says, or raw deflate (RFC 1951) as some servers
    send it; which one is decided from the first two bytes (a zlib header: CM = 8 and a multiple of 31), so a stream
    split anywhere decodes the same."""

    def __init__(self, coding: str):
        self.coding = coding
        self.d = zlib.decompressobj(zlib.MAX_WBITS | 16) if coding in ("gzip", "x-gzip") else None
        self.head = b""  # deflate: the bytes seen before the choice

    def feed(self, data: bytes, room: int) -> bytes:
        """Decompress ``data`` and produce at most ``room`` bytes; input that did not fit stays in ``unconsumed``."""
        if self.d is None:
            self.head += data
            if len(self.head) < 2:
                return b""
            b0, b1 = self.head[0], self.head[1]
            wrapped = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self.d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self.head = self.head, b""
        return self.d.decompress(data, room)

    @property
    def unconsumed(self) -> bytes:
        return self.d.unconsumed_tail if self.d is not None else b""


_DECODERS = {"gzip": _Zlib, "x-gzip": _Zlib, "deflate": _Zlib}


class Body:
    """Reads at most ``cap`` decoded bytes of a streamed answer (``cap + 1`` when ``over`` is asked, so the caller can
    tell a body over its limit). ``wire`` counts the bytes taken off the wire: what the byte counters report."""

    def __init__(self, response, where: str, allowed: bool):
        self.where = where
        self.response = response
        names = codings(response.headers)
        if names and not allowed:
            raise DecodeError(where, f"the server compressed a range answer (Content-Encoding: {', '.join(names)}), which cannot be decoded as a range")
        unknown = [c for c in names if c not in _DECODERS]
        if unknown:
            raise DecodeError(where, f"unsupported Content-Encoding {unknown[0]!r} (asked for: {ACCEPT_ENCODING})")
        self.stages = [_DECODERS[c](c) for c in reversed(names)]  # the last coding applied is undone first
        self.wire = 0

    def read(self, cap: int) -> bytes:
        out = bytearray()
        if cap <= 0:
            return b""
        for chunk in self.response.iter_raw():
            # An identity body counts the bytes it used (the rest of the last chunk is dropped with the connection,
            # as before decoding existed); a compressed one every compressed byte it had to take to produce them.
            self.wire += min(len(chunk), cap - len(out)) if not self.stages else len(chunk)
            self._push(chunk, out, cap)
            if len(out) >= cap:
                break
        del out[cap:]
        return bytes(out)

    def _push(self, chunk: bytes, out: bytearray, cap: int) -> None:
        if not self.stages:
            out += chunk
            return
        pending = [chunk]  # input waiting for stage i
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            produced = []
            for data in pending:
                while len(out) < cap:
                    try:
                        piece = stage.feed(data, _STEP)
                    except zlib.error as e:
                        raise DecodeError(self.where, f"the {stage.coding} body is corrupt ({e})") from None
                    data = stage.unconsumed
                    if last:
                        out += piece
                        self._check_ratio(len(out))
                    elif piece:
                        produced.append(piece)
                    if not data and len(piece) < _STEP:  # input used up and no output held back by the bound
                        break
            pending = produced

    def _check_ratio(self, decoded: int) -> None:
        if decoded > RATIO_GRACE and decoded > MAX_RATIO * self.wire:
            raise DecodeError(
                self.where,
                f"compression bomb refused: {self.wire:,} bytes on the wire expand past {decoded:,} (over {MAX_RATIO}x)",
            )
