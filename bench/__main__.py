"""Lists the benchmarks; run one with ``python -m bench.<name>``."""

import pkgutil

import bench

names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
print("benchmarks:", ", ".join(names) or "(none yet)")
print("run one with: .venv/bin/python -m bench.<name>")
