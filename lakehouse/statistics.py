"""The paper's dataset table, per round: images, annotations per family, regions per image,
words per caption level.  A Delta table (``fld_statistics``) plus a markdown and PNG report."""
from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import functions as F

from florence2.vocabulary import CAPTION_KINDS
from lakehouse.tables import TABLES, TableRoot, read
from quality.gate import word_count

COLUMNS = tuple(f.name for f in TABLES["fld_statistics"].schema.fields[1:-1])


def round_statistics(gold, silver) -> dict:
    """The paper's dataset table for one round: images, annotations per family, regions per image, caption lengths."""
    g = gold.select(
        F.count("*").alias("images"),
        F.sum(F.expr("cast(caption_brief is not null as int) + cast(caption_detailed is not null as int) "
                     "+ cast(caption_more_detailed is not null as int)")).alias("text_annotations"),
        F.sum("n_regions").alias("region_text_annotations"),
        F.sum(F.expr("aggregate(grounding, 0, (acc, x) -> acc + size(x.boxes))")).alias("phrase_region_triplets"),
        F.sum(F.size("words")).alias("ocr_words"),
        F.avg("n_regions").alias("regions_per_image"),
        *[F.avg(word_count(F.col(c))).alias(f"words_{c}") for c in CAPTION_KINDS],
    ).collect()[0].asDict()
    per_annotator = {f"{r['annotator']}/{r['kind']}": r["n"] for r in
                     silver.groupBy("annotator", "kind").agg(F.count("*").alias("n")).collect()}
    return {k: (round(float(v), 3) if isinstance(v, float) else int(v or 0)) for k, v in g.items()} | \
        {"annotations_by_annotator": per_annotator}


def published_statistics(spark, root: TableRoot) -> list[dict]:
    """Statistics of every published round, from gold."""
    gold, silver = read(spark, root, "gold_fld"), read(spark, root, "silver_annotations")
    rounds = sorted(r["round"] for r in read(spark, root, "rounds").filter("published").select("round").distinct().collect())
    return [{"round": n, **round_statistics(gold.filter(F.col("round") == n), silver.filter(F.col("round") == n))}
            for n in rounds]


def write_report(spark, root: TableRoot, out_dir: Path) -> dict:
    stats = published_statistics(spark, root)
    rows = [(s["round"], *[float(s[c]) for c in COLUMNS], json.dumps(s["annotations_by_annotator"])) for s in stats]
    df = spark.createDataFrame(rows, TABLES["fld_statistics"].schema)
    root.save(df.write.format("delta").mode("overwrite"), "fld_statistics")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["| round | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    md += ["| " + " | ".join([str(s["round"])] + [f"{s[c]:g}" for c in COLUMNS]) + " |" for s in stats]
    (out_dir / "fld_statistics.md").write_text("# FLD statistics per published round\n\n" + "\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    fams = ("text_annotations", "region_text_annotations", "phrase_region_triplets", "ocr_words")
    for i, s in enumerate(stats):
        axes[0].bar([j + i * 0.8 / max(1, len(stats)) for j in range(len(fams))], [s[f] for f in fams],
                    width=0.8 / max(1, len(stats)), label=f"round {s['round']}")
        axes[1].bar([j + i * 0.8 / max(1, len(stats)) for j in range(3)],
                    [s[f"words_caption_{lvl}"] for lvl in ("brief", "detailed", "more_detailed")],
                    width=0.8 / max(1, len(stats)), label=f"round {s['round']}")
    axes[0].set_xticks(range(len(fams)), ["text", "region-text", "phrase-region", "OCR words"])
    axes[0].set_title("annotations per family")
    axes[1].set_xticks(range(3), ["brief", "detailed", "more detailed"])
    axes[1].set_title("words per caption")
    for a in axes:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "fld_statistics.png", dpi=100)
    plt.close(fig)
    return {"rounds": stats, "markdown": str(out_dir / "fld_statistics.md"), "png": str(out_dir / "fld_statistics.png")}
