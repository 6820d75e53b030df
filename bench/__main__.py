"""Runs every benchmark (``make bench``), each in its own process, and exits 1 when any of them
exits non-zero — a missed goal, or a failure. ``--list`` only lists them; run one alone with
``python -m bench.<name>``."""

import argparse
import pkgutil
import subprocess
import sys

import bench

names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--list", action="store_true", help="list the benchmarks and run none")
parser.add_argument("only", nargs="*", help=f"run only these: {', '.join(names)}")
args = parser.parse_args()
if unknown := sorted(set(args.only) - set(names)):
    parser.error(f"no such benchmark: {', '.join(unknown)}")
if args.list:
    print("benchmarks:", ", ".join(names) or "(none yet)")
    print("run one with: .venv/bin/python -m bench.<name>")
    raise SystemExit(0)
failed = []
for name in args.only or names:
    print(f"== bench.{name}", flush=True)
    if subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode != 0:
        failed.append(name)
print(f"== {len(args.only or names) - len(failed)} met their goals; missed or failed: {', '.join(failed) or 'none'}")
raise SystemExit(1 if failed else 0)
