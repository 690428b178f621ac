"""A weights file that cannot be opened: a bad file is bad input (2); a refused memory map is memory (3)."""

from __future__ import annotations

from md_export.checkpoint.validate import unreadable_weights
from md_export.core.errors import ConversionError, InputError


def test_a_refused_memory_map_is_not_called_a_bad_file():
    refused = OSError("unable to mmap 1445163712 bytes from file <unet/w.safetensors>: Cannot allocate memory (os error 12)")
    e = unreadable_weights("unet/w.safetensors", refused)
    assert isinstance(e, ConversionError) and "could not map the weights into memory" in str(e)
    assert isinstance(unreadable_weights("w.safetensors", MemoryError()), ConversionError)


def test_a_corrupt_file_is_bad_input():
    e = unreadable_weights("unet/w.safetensors", ValueError("Error while deserializing header: HeaderTooLarge"))
    assert isinstance(e, InputError) and str(e).startswith("unet/w.safetensors: not a readable safetensors file (")
