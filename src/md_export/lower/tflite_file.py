"""A saved .tflite read and written without holding its weights: the flatbuffer table is parsed from a
memory map, every buffer is kept as a (file, offset, size) reference, and writing streams the
buffers after the table, each addressed by offset and size.

That layout is the one LiteRT's converter uses for models over 2 GB and ai-edge-quantizer writes for
every model it quantizes (the table first, then each buffer of 1 KiB or more 16-byte aligned, the
Buffer's `offset` counted from the start of the file); every LiteRT runtime md-export targets reads it.
"""

from __future__ import annotations

import functools
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_OUTSIDE_BYTES = 1024  # smaller buffers stay inside the table, as ai-edge-quantizer does
_COPY_CHUNK = 16 * 1024 * 1024


def schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def op_name(model, op) -> str:
    """The builtin operator name of `op` (TRANSPOSE, FULLY_CONNECTED, ...)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _builtin_names().get(builtin, str(builtin))


@functools.cache
def _builtin_names() -> dict[int, str]:
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def tensor_name(t) -> str:
    n = t.name
    return n.decode() if isinstance(n, (bytes, bytearray)) else str(n or "")


@dataclass
class Span:
    """Where one buffer's bytes are: `size` bytes at `offset` of the file at `path`."""

    path: Path
    offset: int
    size: int

    def read(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise ValueError(f"{self.path}: buffer at {self.offset} is cut short ({len(data)} of {self.size} bytes)")
        return np.frombuffer(data, dtype=np.uint8)


class TableModel:
    """The model object of a .tflite with no buffer data loaded: `spans[i]` says where buffer i's
    bytes are (None for an empty buffer). Edit `model` (the flatbuffers object API) and `spans`,
    then `write`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # the object API unpacks buffer data as views of the map: nothing is read until touched
        self.model = schema().ModelT.InitFromPackedBuf(self._map, 0)
        base = np.frombuffer(self._map, dtype=np.uint8).ctypes.data
        self.spans: list[Span | None] = []
        for buf in self.model.buffers:
            if buf.offset > 1:
                self.spans.append(Span(self.path, int(buf.offset), int(buf.size)))
            elif buf.data is not None and len(buf.data):
                self.spans.append(Span(self.path, int(buf.data.ctypes.data - base), int(buf.data.nbytes)))
            else:
                self.spans.append(None)
            buf.data, buf.offset, buf.size = None, 0, 0

    def data(self, buffer: int) -> np.ndarray | None:
        span = self.spans[buffer] if buffer < len(self.spans) else None
        return None if span is None else span.read()

    def add_buffer(self, span: Span) -> int:
        buf = schema().BufferT()
        self.model.buffers.append(buf)
        self.spans.append(span)
        return len(self.model.buffers) - 1

    def write(self, dest: Path) -> None:
        """Write the model to `dest` (through a temporary file, replaced at the end)."""
        import flatbuffers

        from ai_edge_litert.tools import flatbuffer_utils

        outside = []
        for i, (buf, span) in enumerate(zip(self.model.buffers, self.spans)):
            if span is None:
                buf.data = None
            elif span.size < MIN_OUTSIDE_BYTES:
                buf.data = span.read()
            else:
                # placeholders keep the two fields in the table so they can be set after packing
                buf.data, buf.offset, buf.size = None, 1, 1
                outside.append(i)
        builder = flatbuffers.Builder(1024)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        table = bytearray(builder.Output())
        packed = schema().Model.GetRootAs(table, 0)
        place = {}
        at = _round16(len(table))
        for i in outside:
            place[i] = at
            flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=at, size=self.spans[i].size)
            at = _round16(at + self.spans[i].size)
        tmp = dest.with_name(dest.name + ".writing")
        try:
            with open(tmp, "wb") as out:
                out.write(table)
                for i in outside:
                    out.write(b"\0" * (place[i] - out.tell()))
                    _copy_span(self.spans[i], out)
                out.write(b"\0" * (at - out.tell()))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _copy_span(span: Span, out) -> None:
    with open(span.path, "rb") as src:
        src.seek(span.offset)
        left = span.size
        while left:
            chunk = src.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise ValueError(f"{span.path}: buffer at {span.offset} is cut short")
            out.write(chunk)
            left -= len(chunk)
