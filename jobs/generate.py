"""Generate the synthetic world into the landing area, in all five source formats."""
from __future__ import annotations

import json
import time

from jobs.common import base_parser, settings_from
from lakehouse.synthetic import write_world


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=200, help="number of scenes (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source-name", default="synthetic", help="folder name under landing/<kind>/")
    p.add_argument("--no-bad-inputs", action="store_true", help="skip the deliberately broken inputs")
    args = p.parse_args(argv)
    s = settings_from(args)
    t0 = time.time()
    expected = write_world(s.landing, s.synthetic_dir, args.images, args.seed, not args.no_bad_inputs, args.source_name)
    print(f"[generate] {args.images} scenes in {time.time() - t0:.1f}s -> {s.landing}")
    print(json.dumps(expected, indent=2))
    return expected


if __name__ == "__main__":
    main()
