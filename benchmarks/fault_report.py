"""Fault-injection report: runs the `faults` test suite once and prints the counts it measured.

    .venv/bin/python benchmarks/fault_report.py

Runs `pytest -m faults` over tests/test_faults_*.py with `LAV2_FAULT_COUNTS` / `LAV2_FUZZ_COUNTS` set (the tests
write their counts there) and a JUnit XML report, then prints one table: faults injected (SIGKILLs and damaged
checkpoints), resumes and how many ended bit-identical to the uninterrupted run, named checkpoint errors, fuzzed
records, bad records and how many were counted with a reason, peak RSS of the fuzzed build, hostile-input cases,
crashes (a run that ended neither as injected nor cleanly, or a failed test). Wall time of the suite included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("tests/test_faults_resume.py", "tests/test_faults_data.py", "tests/test_faults_generate.py")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        counts, fuzz, junit = (os.path.join(tmp, n) for n in ("faults.json", "fuzz.json", "junit.xml"))
        env = dict(os.environ, JAX_PLATFORMS="cpu", LAV2_FAULT_COUNTS=counts, LAV2_FUZZ_COUNTS=fuzz)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "faults", f"--junitxml={junit}", *FILES],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        c = json.load(open(counts)) if os.path.exists(counts) else {}
        f = json.load(open(fuzz)) if os.path.exists(fuzz) else {}
        cases = ET.parse(junit).getroot().iter("testcase") if os.path.exists(junit) else []
        results = {}
        for case in cases:
            failed = any(child.tag in ("failure", "error") for child in case)
            results[case.get("classname", "") + "::" + case.get("name", "")] = not failed
    hostile = [k for k in results if "test_faults_generate" in k]
    failed = [k for k, ok in results.items() if not ok]
    rows = [
        ("faults injected (SIGKILL + damaged checkpoints)", c.get("faults_injected", "n/a")),
        ("  of which damaged checkpoints", c.get("damaged_checkpoints", "n/a")),
        ("resumes", c.get("resumes", "n/a")),
        ("resumes bit-identical to the uninterrupted run", c.get("resumes_bit_identical", "n/a")),
        ("named checkpoint errors (dir, item, array)", c.get("named_errors", "n/a")),
        ("fuzzed records", f.get("records", "n/a")),
        ("bad records", f.get("bad_records", "n/a")),
        ("bad records counted with a reason", f.get("bad_records_counted", "n/a")),
        ("distinct skip reasons", f.get("reasons", "n/a")),
        ("peak RSS of the fuzzed build (MiB)", f.get("peak_rss_mib", "n/a")),
        ("hostile generation / damaged-checkpoint cases passed",
         f"{sum(results[k] for k in hostile)}/{len(hostile)}"),
        ("crashes (unexpected exits + failed tests)", c.get("crashes", 0) + f.get("crashes", 0) + len(failed)),
        ("suite wall time (s)", f"{wall:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'count':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if proc.returncode:
        print(proc.stdout[-3000:], file=sys.stderr)
        for k in failed:
            print(f"FAILED {k}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
