"""`make mutants`: apply each mutant of `catalog.py` to a temporary copy of the checkout and run its tests there.

For every mutant: copy the tracked and untracked-not-ignored files (`git ls-files -co --exclude-standard`) to a fresh
temporary folder, apply the mutant's edits (each `old` snippet must occur exactly once, else the result is `error`
and the catalog needs updating), check that Python started there imports the copy's `lav2_jax` (also from a
subprocess), and run `python -m pytest -x -q -p no:cacheprovider <its tests>` with cwd and PYTHONPATH the copy.
Results: `caught` (a test failed), `NOT caught` (all passed), `error` (the mutant no longer applies, or pytest
could not run the tests: a missing file or node id), `timeout`.

First the unmutated copy runs the union of the selected mutants' tests once, without -x (the baseline). Tests that
fail there are reported and deselected from the mutant runs (marked `*` in the table), so a test broken for other
reasons is never mistaken for one that catches a mutant.

`--rev REV` copies the files of a commit instead of the working tree (leaves out edits in progress).
The checkout itself is never modified. Exit status 0 only when the baseline passes and every mutant is caught.

    python tests/mutation/run.py [--list] [--only ID[,ID...]] [--jobs N] [--json OUT] [--timeout S] [--keep]
                                [--rev REV] [--no-baseline] [--baseline-timeout S] [--python PY]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from catalog import MUTANTS, Mutant, by_id  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTEST_FLAGS = ("-q", "-p", "no:cacheprovider", "-rfE")
SANITY = ("import os, subprocess, sys, lav2_jax\n"
          "child = subprocess.check_output([sys.executable, '-c', 'import lav2_jax; print(lav2_jax.__file__)'],"
          " text=True).strip()\n"
          "print(os.path.realpath(lav2_jax.__file__)); print(os.path.realpath(child))\n")


@dataclasses.dataclass
class Result:
    id: str
    file: str
    description: str
    tests: list[str]
    result: str  # caught / NOT caught / error / timeout
    seconds: float
    detail: str = ""  # the failing test (caught), or why (error / timeout)
    deselected: list[str] = dataclasses.field(default_factory=list)  # baseline failures left out


# ---- the copy --------------------------------------------------------------------------------------------------

class Source:
    """The files each run copies: the working tree's tracked and untracked-not-ignored files (`rev` None), or the
    tree of commit `rev` (`git archive`), so edits in progress in the checkout can be left out."""

    def __init__(self, root: str = ROOT, rev: str | None = None):
        self.root, self.rev = root, rev
        if rev is None:
            out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                                 capture_output=True).stdout.decode()
            self.files = [p for p in out.split("\0") if p]
            self.tar = b""
        else:
            self.commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=root, check=True,
                                         capture_output=True, text=True).stdout.strip()
            self.tar = subprocess.run(["git", "archive", "--format=tar", self.commit], cwd=root, check=True,
                                      capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(self.tar)) as tf:
                self.files = [m.name for m in tf.getmembers() if not m.isdir()]

    def describe(self) -> str:
        return "working tree" if self.rev is None else f"commit {self.commit[:12]} ({self.rev})"

    def read(self, rel: str) -> str | None:
        """The text of file `rel` in this source (None when it has no such file)."""
        if self.rev is None:
            path = os.path.join(self.root, rel)
            return open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        proc = subprocess.run(["git", "show", f"{self.commit}:{rel}"], cwd=self.root, capture_output=True)
        return proc.stdout.decode() if proc.returncode == 0 else None

    def copy_to(self, dst: str) -> None:
        os.makedirs(dst, exist_ok=True)
        if self.rev is not None:
            with tarfile.open(fileobj=io.BytesIO(self.tar)) as tf:
                tf.extractall(dst, filter="tar")
            return
        for rel in self.files:
            src = os.path.join(self.root, rel)
            if not os.path.lexists(src):  # tracked but deleted in the working tree
                continue
            target = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=False)


def check_edits(m: Mutant, text: str) -> str | None:
    """Why `m` does not apply to `text` (None when every `old` occurs exactly once)."""
    for i, (old, _) in enumerate(m.edits):
        n = text.count(old)
        if n != 1:
            where = f"edit {i + 1} of {len(m.edits)}"
            snippet = old.strip().splitlines()[0][:70]
            return (f"{where}: snippet {'not found' if n == 0 else f'occurs {n} times'} in {m.file} "
                    f"({snippet!r}); update tests/mutation/catalog.py")
    return None


def apply_mutant(m: Mutant, tree: str) -> str | None:
    """Applies `m` inside `tree`; returns the reason it does not apply (nothing is written then)."""
    path = os.path.join(tree, m.file)
    if not os.path.isfile(path):
        return f"{m.file} does not exist; update tests/mutation/catalog.py"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    why = check_edits(m, text)
    if why:
        return why
    for old, new in m.edits:
        text = text.replace(old, new)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return None


def copy_env(tree: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def sanity_check(python: str, tree: str) -> str | None:
    """None when Python in `tree` (and a subprocess it starts) imports `tree`'s lav2_jax, else what it imported."""
    proc = subprocess.run([python, "-c", SANITY], cwd=tree, env=copy_env(tree), capture_output=True, text=True,
                          timeout=300)
    want = os.path.realpath(os.path.join(tree, "lav2_jax", "__init__.py"))
    got = proc.stdout.split()
    if proc.returncode != 0 or got != [want, want]:
        return f"the copy's lav2_jax is not the one imported (want {want}, got {got}): {proc.stderr[-500:]}"
    return None


# ---- pytest ------------------------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S.*?)(?: - .*)?$")


def failed_ids(output: str) -> list[str]:
    """Node ids (or file paths, for collection errors) from pytest's short summary lines."""
    return [m.group(2) for line in output.splitlines() if (m := _SUMMARY.match(line))]


def run_pytest(python: str, tree: str, targets: list[str], extra: list[str], timeout: float):
    """(return code or None on timeout, output, seconds)."""
    cmd = [python, "-m", "pytest", *PYTEST_FLAGS, f"--basetemp={tree}.pytest", *extra, *targets]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=copy_env(tree), capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, time.monotonic() - t0


def _file_of(target: str) -> str:
    return target.split("::")[0]


def _covers(target: str, failed: str) -> bool:
    """Whether the baseline failure `failed` (node id or file) lies inside the test target `target`."""
    return failed == target or failed.startswith(target + "::") or failed.startswith(target + "[") \
        or (failed == _file_of(target))


def run_one(m: Mutant, python: str, source: Source, workdir: str, baseline_failed: list[str], timeout: float,
            keep: bool) -> Result:
    t0 = time.monotonic()
    res = Result(m.id, m.file, m.description, list(m.tests), "error", 0.0)
    tree = os.path.join(workdir, m.id)
    try:
        source.copy_to(tree)
        why = apply_mutant(m, tree)
        if why is None:
            why = sanity_check(python, tree)
        if why is not None:
            res.detail = why
            return res
        broken = [f for f in baseline_failed if any(_covers(t, f) for t in m.tests)]
        whole = [f for f in broken if "::" not in f]  # a file that does not even collect
        if whole:
            res.detail = f"baseline cannot run {', '.join(whole)}"
            return res
        res.deselected = broken
        extra = ["-x"] + [f"--deselect={f}" for f in broken]
        rc, out, _ = run_pytest(python, tree, list(m.tests), extra, timeout)
        if rc is None:
            res.result, res.detail = "timeout", f"tests ran past {timeout:.0f} s"
        elif rc == 0:
            res.result = "NOT caught"
        elif rc in (1, 2):  # 2: the mutant broke collection (an import error), which fails the run too
            res.result = "caught"
            ids = failed_ids(out)
            res.detail = ids[0] if ids else out.strip().splitlines()[-1][:200]
        else:
            res.detail = f"pytest exit {rc}: " + " | ".join(out.strip().splitlines()[-3:])[:300]
        return res
    finally:
        res.seconds = time.monotonic() - t0
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)
            shutil.rmtree(tree + ".pytest", ignore_errors=True)


def baseline(python: str, source: Source, workdir: str, targets: list[str], timeout: float):
    """(failed node ids, problem or None, seconds) of the unmutated copy over `targets`, without -x."""
    tree = os.path.join(workdir, "_baseline")
    source.copy_to(tree)
    why = sanity_check(python, tree)
    if why:
        return [], why, 0.0
    rc, out, secs = run_pytest(python, tree, targets, [], timeout)
    shutil.rmtree(tree + ".pytest", ignore_errors=True)
    if rc is None:
        return [], f"baseline ran past {timeout:.0f} s", secs
    if rc not in (0, 1, 2):
        return [], f"pytest exit {rc}: " + " | ".join(out.strip().splitlines()[-5:]), secs
    failed = failed_ids(out)
    if rc != 0 and not failed:
        return [], "baseline failed without a summary line: " + out.strip()[-500:], secs
    return failed, None, secs


# ---- output ------------------------------------------------------------------------------------------------------

def _short(t: str) -> str:
    return t.replace("tests/", "").replace(".py", "")


def table(results: list[Result]) -> str:
    """Aligned text table; the description and tests columns wrap."""
    rows = [("id", "file", "description", "tests", "result", "seconds")]
    for r in results:
        mark = "*" if r.deselected else ""
        rows.append((r.id, r.file.replace("lav2_jax/", ""), r.description, ", ".join(_short(t) for t in r.tests),
                     r.result + mark, f"{r.seconds:.0f}"))
    limits = {2: 56, 3: 36}
    wrapped = [[textwrap.wrap(c, limits[i], break_on_hyphens=False) or [""] if i in limits else [c]
                for i, c in enumerate(row)] for row in rows]
    widths = [max(len(part) for row in wrapped for part in row[i]) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(wrapped):
        for k in range(max(len(parts) for parts in row)):
            cells = [parts[k] if k < len(parts) else "" for parts in row]
            lines.append("  ".join(c.rjust(w) if i == 5 else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if n == 0:
            lines.append("-" * max(len(x) for x in lines))
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.detail:
            out.append(f"{r.id}: {r.result}: {r.detail}")
        if r.deselected:
            out.append(f"{r.id}: * baseline failures deselected: {', '.join(r.deselected)}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the mutants and whether each still applies; run nothing")
    p.add_argument("--only", action="append", default=[], help="mutant id(s), comma-separated or repeated")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at the same time (default 1)")
    p.add_argument("--json", default=None, help="write the results (and the baseline) to this JSON file")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run (default 1800)")
    p.add_argument("--baseline-timeout", type=float, default=7200.0,
                   help="seconds for the baseline run of all selected tests (default 7200)")
    p.add_argument("--python", default=None, help="interpreter (default: the checkout's .venv, else this one)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (assume it passes)")
    p.add_argument("--rev", default=None,
                   help="copy the files of this commit (e.g. HEAD) instead of the working tree")
    p.add_argument("--show", default=None, metavar="JSON", help="print the table of a --json file; run nothing")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies (their folder is printed)")
    args = p.parse_args(argv)

    if args.show:
        saved = json.load(open(args.show, encoding="utf-8"))
        results = [Result(**r) for r in saved["results"]]
        print(table(results))
        print()
        print(details(results))
        missed = [r.id for r in results if r.result != "caught"]
        print(f"\n{saved.get('source', '')}; started {saved['started']}; total {saved['seconds']:.0f} s "
              f"(baseline {saved['baseline']['seconds']:.0f} s); {len(results) - len(missed)}/{len(results)} caught"
              + (f"; not caught or error: {', '.join(missed)}" if missed else ""))
        return 1 if missed else 0
    table_by_id = by_id()
    wanted = [i for arg in args.only for i in arg.split(",") if i]
    unknown = [i for i in wanted if i not in table_by_id]
    if unknown:
        p.error(f"unknown mutant id(s) {', '.join(unknown)}; see --list")
    mutants = [table_by_id[i] for i in wanted] if wanted else list(MUTANTS)

    source = Source(ROOT, args.rev)
    if args.list:
        bad = 0
        for m in mutants:
            text = source.read(m.file)
            why = check_edits(m, text) if text is not None else f"{m.file} does not exist"
            bad += why is not None
            print(f"{m.id:32s} {m.file:42s} {'applies' if why is None else 'ERROR ' + why}")
            print(f"{'':32s} {m.description}")
            print(f"{'':32s} tests: {', '.join(m.tests)}")
        return 1 if bad else 0

    venv = os.path.join(ROOT, ".venv", "bin", "python")
    python = os.path.abspath(args.python) if args.python else (venv if os.path.exists(venv) else sys.executable)
    from tqdm.auto import tqdm

    workdir = tempfile.mkdtemp(prefix="lav2-mutants-")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_all = time.monotonic()
    print(f"mutants: {len(mutants)} · {len(source.files)} files of the {source.describe()} copied per run · "
          f"python {python} · work dir {workdir} · started {started}", flush=True)
    try:
        targets = list(dict.fromkeys(t for m in mutants for t in m.tests))
        failed, problem, base_s = [], None, 0.0
        if not args.no_baseline:
            print(f"baseline: {len(targets)} test targets on the unmutated copy ...", flush=True)
            failed, problem, base_s = baseline(python, source, workdir, targets, args.baseline_timeout)
            if problem:
                print(f"baseline: PROBLEM: {problem}", flush=True)
                return 2
            print(f"baseline: {'passes' if not failed else f'{len(failed)} failing test(s)'} ({base_s:.0f} s)",
                  flush=True)
            for f in failed:
                print(f"  baseline failure: {f}", flush=True)

        results: list[Result] = []
        with tqdm(total=len(mutants), desc="mutants", unit="mutant", dynamic_ncols=True) as bar, \
                concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
            futures = {pool.submit(run_one, m, python, source, workdir, failed, args.timeout, args.keep): m
                       for m in mutants}
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                results.append(r)
                bar.write(f"{r.id}: {r.result}{'*' if r.deselected else ''} ({r.seconds:.0f} s)"
                          + (f" — {r.detail}" if r.detail else ""))
                bar.update(1)
        order = {m.id: i for i, m in enumerate(mutants)}
        results.sort(key=lambda r: order[r.id])
        total_s = time.monotonic() - t_all
        print()
        print(table(results))
        print()
        print(details(results))
        missed = [r.id for r in results if r.result != "caught"]
        print(f"\n{source.describe()}; started {started}; total {total_s:.0f} s (baseline {base_s:.0f} s); "
              f"{len(results) - len(missed)}/{len(results)} caught"
              + (f"; not caught or error: {', '.join(missed)}" if missed else "")
              + (f"; {len(failed)} baseline failure(s), * = deselected" if failed else ""))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"started": started, "source": source.describe(), "seconds": total_s, "baseline": {"failed": failed, "seconds": base_s},
                           "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
        return 1 if missed or failed else 0
    finally:
        if args.keep:
            print(f"copies kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
