from __future__ import annotations

from lakehouse.sources.base import SourceAdapter, label, manifest_row


class ConceptualCaptionsTSV(SourceAdapter):
    """Conceptual Captions style: ``<source>/*.tsv`` with ``caption<TAB>url`` per line, no header.
    The url is http(s), file://, an absolute path or a path relative to the source folder.
    """

    kind = "cc"
    glob = "*.tsv"
    description = "Conceptual Captions-style TSV (image URL + alt text)"

    def _parse(self, path, source_name, dataset_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                oid = f"{path.name}:{n}"
                parts = line.split("\t")
                if len(parts) != 2 or not parts[1].strip():
                    yield manifest_row(self, source_name, oid, error_reason="malformed_record",
                                       error_detail=f"line {n}: expected 'caption<TAB>url', got {line[:120]!r}")
                    continue
                caption, url = parts[0].strip(), parts[1].strip()
                yield manifest_row(self, source_name, oid, uri=self.resolve(dataset_dir, url),
                                   labels=[label("caption", caption)] if caption else [])
