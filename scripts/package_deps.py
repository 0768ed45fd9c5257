"""Which of our packages each package imports (an AST scan): python scripts/package_deps.py [checkout]."""
import ast, pathlib, collections, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
pk = ("jobs", "lakehouse", "quality", "florence2")
deps = collections.defaultdict(set)
for p in pk:
    for f in (root / p).rglob("*.py"):
        mod = ".".join(f.relative_to(root).with_suffix("").parts)
        for n in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module] if isinstance(n, ast.ImportFrom) and n.module else []
            for m in names:
                top = m.split(".")[0]
                if top in pk and top != p:
                    deps[p].add(top)
for p in pk:
    print(p, "->", ", ".join(sorted(deps[p])) or "nothing of ours")
