from __future__ import annotations

import pyarrow.parquet as pq

from lakehouse.sources.base import SourceAdapter, label, manifest_row


class LaionParquet(SourceAdapter):
    """LAION / img2dataset style: ``<source>/*.parquet`` with ``url``, ``caption`` (or ``TEXT``),
    optional ``key`` and optional image bytes in ``jpg`` (or ``image``/``bytes``).
    Inline bytes win; otherwise the url is fetched (or read, if it is a path).
    """

    kind = "laion"
    glob = "*.parquet"
    description = "LAION-style parquet (bytes or URL + caption)"
    _BYTES = ("jpg", "image", "bytes")
    _CAPTION = ("caption", "TEXT", "text")

    def _parse(self, path, source_name, dataset_dir):
        pf = pq.ParquetFile(path)
        cols = set(pf.schema_arrow.names)
        bcol = next((c for c in self._BYTES if c in cols), None)
        ccol = next((c for c in self._CAPTION if c in cols), None)
        n = 0
        for batch in pf.iter_batches(batch_size=256):
            for r in batch.to_pylist():
                n += 1
                oid = str(r.get("key") or f"{path.name}:{n}")
                data, url, caption = r.get(bcol) if bcol else None, r.get("url"), r.get(ccol) if ccol else None
                labs = [label("caption", caption.strip())] if caption and caption.strip() else []
                if data is None and not url:
                    yield manifest_row(self, source_name, oid, error_reason="malformed_record",
                                       error_detail=f"row {n}: neither image bytes nor url")
                    continue
                # Inline bytes are located by their record, so every bronze row has a uri.
                uri = self.resolve(dataset_dir, url) if url else f"{path}#{oid}"
                yield manifest_row(self, source_name, oid, uri=uri, content=data, labels=labs)
