"""Runs every benchmark (``make bench``), each in its own process, records what each measured and
exits 1 when any of them exits non-zero — a missed goal, or a failure. ``--quick`` (``make
bench-quick``) runs fewer rounds and leaves out the scenarios that build a lab; ``--list`` only
lists them; run one alone with ``python -m bench.<name>``. Results: ``bench/results/``,
``bench/RESULTS.md``, ``bench/plots/`` (see bench/_suite.py)."""

import argparse
import pkgutil

import bench
from bench._suite import LAB_SCENARIOS, run

names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--list", action="store_true", help="list the benchmarks and run none")
parser.add_argument("--quick", action="store_true",
                    help="fewer rounds and shorter slices; lab scenarios only when named (make bench-quick)")
parser.add_argument("only", nargs="*", help=f"run only these: {', '.join(names)}")
args = parser.parse_args()
if unknown := sorted(set(args.only) - set(names)):
    parser.error(f"no such benchmark: {', '.join(unknown)}")
if args.list:
    print("benchmarks:", ", ".join(names) or "(none yet)")
    print("run one with: .venv/bin/python -m bench.<name>")
    raise SystemExit(0)
chosen = args.only or [n for n in names if not (args.quick and n in LAB_SCENARIOS)]
raise SystemExit(run(chosen, args.quick))
