from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator


def local_path(path_or_uri: str) -> str:
    """Spark hands out ``file:/abs/path`` (Hadoop's ``Path.toString``: not percent-encoded); adapters work
    with plain paths.  The scheme is cut off, not parsed: a ``#`` or ``?`` in a file name is part of it."""
    if path_or_uri.startswith("file://"):
        return path_or_uri[len("file://"):]
    if path_or_uri.startswith("file:"):
        return path_or_uri[len("file:"):]
    return path_or_uri


def manifest_row(adapter: "SourceAdapter", source_name: str, original_id: str, uri: str | None = None,
                 content: bytes | None = None, labels: list[dict] | None = None,
                 error_reason: str | None = None, error_detail: str | None = None) -> dict:
    return {"source_kind": adapter.kind, "source_name": source_name, "original_id": original_id, "uri": uri,
            "content": content, "labels": labels or [], "error_reason": error_reason, "error_detail": error_detail,
            "root": None}


def label(kind: str, text: str | None = None, bbox=None, polygons=None, quad=None, normalized: bool = False) -> dict:
    return {"kind": kind, "text": text, "bbox": None if bbox is None else [float(v) for v in bbox],
            "polygons": None if polygons is None else [[float(v) for v in p] for p in polygons],
            "quad": None if quad is None else [float(v) for v in quad], "normalized": normalized}


class SourceAdapter:
    kind: str = ""
    glob: str = "*"          # file names this adapter owns under landing/<kind>/
    description: str = ""

    def source_name(self, path: str, kind_root: str) -> str:
        rel = Path(local_path(path)).relative_to(Path(local_path(kind_root)))
        return rel.parts[0] if len(rel.parts) > 1 else "default"

    def dataset_dir(self, path: str, kind_root: str) -> Path:
        name = self.source_name(path, kind_root)
        root = Path(local_path(kind_root))
        return root / name if name != "default" else root

    def resolve(self, dataset_dir: Path, ref: str) -> str:
        """A reference from a manifest file: URL stays, relative path is taken from the dataset dir."""
        if "://" in ref and not ref.startswith("file://"):
            return ref
        ref = local_path(ref)
        return ref if os.path.isabs(ref) else str(dataset_dir / ref)

    def parse(self, path: str, kind_root: str) -> Iterator[dict]:
        """Yield manifest rows for one landed file.  Never raises for bad content."""
        name = self.source_name(path, kind_root)
        root = str(self.dataset_dir(path, kind_root))
        try:
            for row in self._parse(Path(local_path(path)), name, self.dataset_dir(path, kind_root)):
                yield row | {"root": root}  # local references must stay inside the dataset folder
        except Exception as e:  # a file we cannot interpret becomes one quarantined record naming it
            yield manifest_row(self, name, Path(local_path(path)).name, uri=local_path(path),
                               error_reason="malformed_record", error_detail=f"{type(e).__name__}: {e}")

    def _parse(self, path: Path, source_name: str, dataset_dir: Path) -> Iterator[dict]:
        raise NotImplementedError
