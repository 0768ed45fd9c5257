"""Evaluate a Florence-2 model with the paper's protocols, next to trivial baselines; log to MLflow.

Data: the validation split of ``training_examples`` (a pinned version), and/or any
COCO-format folder (``images/`` + ``annotations/instances*.json`` / ``captions*.json``).
With ``--promote``, the ``champion`` alias moves to the evaluated model version when
its score beats the current champion's (score: the mean of mAP, grounding R@1, REC
accuracy, RES mIoU, OCR word F1, 1 - CER and CIDEr/(1 + CIDEr), over what was measured).
"""
from __future__ import annotations

from jobs.common import base_parser, settings_from


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--model", default="models:/florence2@candidate", help="model directory or MLflow model URI")
    p.add_argument("--examples-version", type=int, default=None, help="training_examples version (default: latest)")
    p.add_argument("--coco", default=None, help="a COCO-format folder to evaluate on as well")
    p.add_argument("--limit", type=int, default=200, help="examples per source at most")
    p.add_argument("--synthetic-referring", action="store_true",
                   help="also score referring expressions (REC accuracy, RES mIoU) on the synthetic world's "
                        "ground truth ($FLD_HOME/synthetic), which FLD's three families do not contain")
    p.add_argument("--promote", action="store_true", help="move the champion alias if this model beats it")
    p.add_argument("--registered-name", default="florence2")
    args = p.parse_args(argv)

    from lakehouse.evaluation import evaluate
    from lakehouse.tracking import promote

    results = evaluate(settings_from(args), args.model, args.examples_version, args.coco, args.limit,
                       args.synthetic_referring)
    for name, r in results.items():
        if isinstance(r, dict) and "model" in r:
            print(f"[evaluate] {name}:")
            for k in sorted(r["model"]):
                print(f"  {k:16s} model {r['model'][k]:.4f}   baseline {r['baseline'].get(k, float('nan')):.4f}")
    print(f"[evaluate] score {results['score']:.4f}")
    if args.promote:
        results["promoted"] = promote(args.registered_name, args.model, results["score"])
    return results


if __name__ == "__main__":
    main()
