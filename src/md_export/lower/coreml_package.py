"""Make a saved .mlpackage byte-reproducible: coremltools writes the model protobuf with maps in
hash order and gives each package item a random UUID, so two exports of the same model differ.
Rewritten here, the same program and weights give the same bytes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from md_export.core.io import write_file

_NAMESPACE = uuid.UUID("6d642d65-7870-6f72-742d-6d6c7061636b")  # fixed: "md-export-mlpack" in hex


def normalize_mlpackage(package: Path) -> None:
    """Deterministic protobuf serialisation of Data/com.apple.CoreML/model.mlmodel and stable item
    identifiers in Manifest.json (a UUID derived from each item's path)."""
    from coremltools.proto import Model_pb2

    package = Path(package)
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = manifest.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(_NAMESPACE, entry["path"])) for old, entry in entries.items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in entries.items()}
    if manifest.get("rootModelIdentifier") in renamed:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    # sorted keys, 4-space indent, a final newline: byte for byte what coremltools' ModelPackage writes
    # when it opens a package (ct.utils.load_spec does), so reading a package never changes its sha256
    write_file(manifest_path, (json.dumps(manifest, indent=4, sort_keys=True) + "\n").encode("utf-8"))
    for entry in manifest["itemInfoEntries"].values():
        spec_path = package / "Data" / entry["path"]
        if spec_path.is_file() and spec_path.name.endswith(".mlmodel"):
            spec = Model_pb2.Model()
            spec.ParseFromString(spec_path.read_bytes())
            write_file(spec_path, spec.SerializeToString(deterministic=True))
