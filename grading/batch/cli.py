"""``python -m grading batch`` and ``python -m grading merge``: argument parsing and the outputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

from grading.batch import answers, inputs, report, run, tables
from grading.sandbox import GRADER_RESERVE_BYTES, UNLIMITED, SandboxConfig

SETTINGS = "batch.json"


def _settings(args: argparse.Namespace, zip_path: Path) -> dict[str, Any]:
    """What the outputs need besides the gradings (kept in OUT, so ``merge`` writes the same)."""
    name = answers.assignment_name(zip_path)
    release = zip_path.resolve().parent
    solution = args.solution or release / f"{name}-solution.ipynb"
    blank = args.blank or release.parents[1] / "student_release" / name / f"{name}.ipynb"
    return {
        "wanted": {"solution": str(solution), "blank": str(blank)},
        "assignment": name,
        "autograder": str(zip_path.resolve()),
        "solution": str(solution) if Path(solution).is_file() else "",
        "blank": str(blank) if Path(blank).is_file() else "",
        "previous": str(args.previous.resolve()) if args.previous else "",
        "anonymise": bool(args.anonymise),
        # K/N (normalised), so that merge can tell whether every shard is there.
        "shard": "/".join(str(int(x)) for x in args.shard.strip().split("/")) if args.shard else "",
    }


def write_outputs(out: Path, settings: dict[str, Any], ids: set[str] | None = None) -> list[str]:
    """grades.csv, grades-canvas.csv, report.html, manual.html from ``out/submissions``; returns
    what was written. ``ids`` limits the rows to this run's submissions."""
    rows = [r for r in tables.load_rows(out) if ids is None or r.id in ids]
    name = settings.get("assignment") or "assignment"
    tables.write_grades(rows, out / "grades.csv")
    tables.write_canvas(rows, out / "grades-canvas.csv", f"{name} (autograded)")
    regrade = None
    if settings.get("previous"):
        regrade = tables.regrade_diff(tables.read_grades(Path(settings["previous"])), rows)
    boilerplate = ""
    if settings.get("blank"):
        nb = json.loads(Path(settings["blank"]).read_text(encoding="utf-8"))
        boilerplate = answers.from_notebook(nb)["code"]
    report.write_report(
        rows, out / "report.html", title=name, regrade=regrade, boilerplate=boilerplate
    )
    written = ["grades.csv", "grades-canvas.csv", "report.html"]
    rubric = answers.rubric(Path(settings["solution"])) if settings.get("solution") else {}
    # A manual.html (or key) from an earlier run would show stale answers as if current.
    for stale in ("manual.html", "manual-key.csv"):
        (out / stale).unlink(missing_ok=True)
    if rubric:
        anonymise = bool(settings.get("anonymise"))
        report.write_manual(rows, out / "manual.html", rubric, anonymise=anonymise)
        written += ["manual.html", "manual-key.csv"] if anonymise else ["manual.html"]
    return written


def missing_inputs_warnings(settings: dict[str, Any], wanted: dict[str, str]) -> list[str]:
    """Loud notes for the outputs a missing solution or blank notebook costs (the defaults are
    found only next to a zip inside this repository's release folders)."""
    notes = []
    if not settings.get("solution"):
        notes.append(
            f"WARNING: no solution notebook at {wanted['solution']}, so manual.html (the "
            "hand-graded questions' answers beside the rubric) is NOT written. Pass --solution "
            "PATH/<name>-solution.ipynb (autograder/<name>/ of the release that built the zip)."
        )
    if not settings.get("blank"):
        notes.append(
            f"WARNING: no blank student notebook at {wanted['blank']}, so the similarity table "
            "counts the code every student was given. Pass --blank "
            "PATH/<name>.ipynb (student_release/<name>/ of that release)."
        )
    return notes


def batch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grading batch",
        description="Grade a class: every submission in SUBMISSIONS through the sandboxed grader, "
        "into OUT (grades.csv, grades-canvas.csv, report.html, manual.html, one folder per "
        "submission with its results.json). Run as root for the sandbox.",
    )
    parser.add_argument("autograder", type=Path, help="the release's autograder.zip")
    parser.add_argument(
        "submissions",
        type=Path,
        help="a folder of notebooks, of exported zips, or Gradescope's 'Export Submissions' "
        "download (submission_<id>/ folders and submission_metadata.yml)",
    )
    parser.add_argument("out", type=Path, help="output folder (created; reused to resume)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="gradings at once (default: cores)"
    )
    parser.add_argument(
        "--shard", default=None, help="grade only shard K/N (K from 0), e.g. $SLURM_ARRAY_TASK_ID/8"
    )
    parser.add_argument(
        "--force", action="store_true", help="grade again what OUT already holds for this zip"
    )
    parser.add_argument(
        "--previous", type=Path, default=None, help="an earlier grades.csv: report who moved"
    )
    parser.add_argument(
        "--solution", type=Path, default=None,
        help="otter's solution notebook, for manual.html's rubric (default: next to the zip)",
    )  # fmt: skip
    parser.add_argument(
        "--blank", type=Path, default=None,
        help="the student notebook, whose code the similarity table ignores (default: the "
        "release's student_release/<name>/<name>.ipynb)",
    )  # fmt: skip
    parser.add_argument(
        "--anonymise", action="store_true", help="manual.html shows codes, not names"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--grader-arg", action="append", default=[],
        help="passed on to `python -m grading` (repeat), e.g. --grader-arg=--jail=require",
    )  # fmt: skip
    return parser


PREVIOUS_COPY = "grades-previous.csv"


def _keep_previous(previous: Path, out: Path, parser: argparse.ArgumentParser) -> Path:
    """The earlier grades.csv to compare with, safe from this run's writes.

    ``OUT/grades.csv`` itself is rewritten by this run, so reading it afterwards would compare the
    new grades with themselves ("Nobody moved"): it is copied to ``OUT/grades-previous.csv``
    first, with a note. A file that is not a grades.csv stops the run before anything is graded.
    """
    if not previous.is_file():
        parser.error(f"--previous {previous}: no such file; give an earlier grades.csv")
    try:
        tables.read_grades(previous)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        parser.error(f"--previous: {err}")
    if previous.resolve() == (out / "grades.csv").resolve():
        copy = out / PREVIOUS_COPY
        shutil.copyfile(previous, copy)
        print(f"batch: --previous is the grades.csv this run overwrites; compared with a copy "
              f"made now, {copy}. Next time keep the old grades.csv outside OUT.",
              file=sys.stderr)  # fmt: skip
        return copy
    return previous


#: Memory one grading may take at once: its kernel's cap and the grader beside it.
PER_GRADING_BYTES = SandboxConfig().cgroup_memory_bytes + GRADER_RESERVE_BYTES


def own_memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The smallest memory limit (bytes) on this process's cgroup and the groups above it:
    cgroup v1's memory.limit_in_bytes, or v2's memory.max; None when there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            base, name = root / "memory", "memory.limit_in_bytes"
        elif controllers == "" and (root / "cgroup.controllers").exists():  # v2, unified
            base, name = root, "memory.max"
        else:
            continue
        group = base / path.lstrip("/")
        for g in [group, *group.parents]:
            if g == base.parent:
                break
            with contextlib.suppress(OSError, ValueError):
                limits.append(int((g / name).read_text().strip()))  # "max" (v2): no limit
    known = [n for n in limits if n < UNLIMITED]
    return min(known) if known else None


def fit_jobs(jobs: int, limit: int | None) -> int:
    """``jobs`` lowered so that that many gradings (PER_GRADING_BYTES each) fit under the memory
    ``limit`` this process runs under: beyond it one student's kernel can get another's killed
    by the shared group's OOM killer. Says so on stderr when it lowers them."""
    if limit is None or jobs * PER_GRADING_BYTES <= limit:
        return jobs
    fit = max(1, limit // PER_GRADING_BYTES)
    print(f"batch: --jobs {jobs} lowered to {fit}: this process's memory group allows "
          f"{limit / 2**20:.0f} MB and each grading may take {PER_GRADING_BYTES / 2**20:.0f} MB "
          "(kernel and grader); raise the group's limit to run more at once.",
          file=sys.stderr)  # fmt: skip
    return fit


def main_batch(argv: list[str]) -> int:
    """``python -m grading batch``; exit 0 when the run finished (bad submissions included), 1
    when not one submission could be graded, 2 for bad arguments or an empty SUBMISSIONS."""
    parser = batch_parser()
    args = parser.parse_args(argv)
    if not args.autograder.is_file() or not zipfile.is_zipfile(args.autograder):
        parser.error(f"{args.autograder} is not a zip file: give the release's autograder.zip")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    for flag, path in (("--solution", args.solution), ("--blank", args.blank)):
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path}: no such file")
    try:
        subs = inputs.discover(args.submissions)
        if args.shard:
            subs = inputs.shard(subs, args.shard)
    except ValueError as err:
        parser.error(str(err))
    for line in inputs.renamed(subs):  # before the progress bar, and again in the summary
        print(f"batch: WARNING: {line}", file=sys.stderr)
    if not subs and not args.shard:
        parser.error(f"{args.submissions} holds no submission (no .ipynb, no .zip, no folder): "
                     "give the folder of notebooks or Gradescope's unzipped export")  # fmt: skip
    out = args.out.resolve()
    if args.submissions.resolve() in (out, *out.parents):
        parser.error("OUT must not be inside SUBMISSIONS: the originals are never written to")
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)  # results hold every student's work and score
    if args.previous:
        args.previous = _keep_previous(args.previous, out, parser)
    settings = _settings(args, args.autograder)
    for note in missing_inputs_warnings(settings, settings["wanted"]):
        print(note, file=sys.stderr)
    (out / SETTINGS).write_text(json.dumps(settings, indent=1, sort_keys=True))
    if os.geteuid() != 0:
        print("batch: not root, so notebooks run unsandboxed as this user: trusted input only.",
              file=sys.stderr)  # fmt: skip
    config = run.BatchConfig(
        jobs=fit_jobs(args.jobs, own_memory_limit()),
        force=args.force,
        grader_args=tuple(args.grader_arg),
        progress=not args.no_progress,
    )
    previous_handlers = run.install_signal_handlers()
    try:
        counts = run.grade_all(args.autograder, subs, out, config)
    finally:
        run.restore_signal_handlers(previous_handlers)
    written = write_outputs(out, settings, ids={s.id for s in subs})
    failed = [
        r for r in tables.load_rows(out) if r.id in {s.id for s in subs}
        and r.record.get("status") != "graded"
    ]  # fmt: skip
    where = f"shard {settings['shard']}: " if settings.get("shard") else ""
    # An "error" record (the grader's own failure) is never reused: the rerun grades it again.
    retried = f", {counts['retried']} run again after a grader error" if counts["retried"] else ""
    print(
        f"{where}{len(subs)} submissions: {counts['graded']} graded now, {counts['reused']} "
        f"reused (same upload, same autograder){retried}, {len(failed)} could not be graded."
    )
    for row in failed:
        reason = tables.shorten(str(row.record.get("reason", "")))
        print(f"  {row.id}: {row.record.get('status')}: {reason}")
    for line in inputs.renamed(subs):
        print(f"WARNING: {line}; grades.csv's 'upload' column names each row's file")
    print("wrote", ", ".join(str(out / name) for name in written))
    note = tables.canvas_note([r for r in tables.load_rows(out) if r.id in {s.id for s in subs}])
    if note:
        print(note)
    for note in missing_inputs_warnings(settings, settings["wanted"]):
        print(note, file=sys.stderr)  # again: the progress bar has scrolled the first one away
    if subs and len(failed) == len(subs):
        print("batch: no submission could be graded: check SUBMISSIONS and the reasons above "
              "(exit 1)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def missing_shards(settings: list[dict[str, Any]]) -> str:
    """What is wrong with a set of shards' settings ('' when they are all K/N of one N)."""
    specs = [str(s.get("shard", "")) for s in settings]
    if not all(specs):
        return "some OUT folders are not from a --shard K/N run, so completeness is unknown"
    ns = {spec.split("/")[1] for spec in specs}
    if len(ns) > 1:
        return f"the shards were split differently (N = {', '.join(sorted(ns))})"
    n = int(ns.pop())
    ks = [int(spec.split("/")[0]) for spec in specs]
    twice = sorted({k for k in ks if ks.count(k) > 1})
    if twice:
        return f"shard(s) {', '.join(f'{k}/{n}' for k in twice)} given twice"
    missing = sorted(set(range(n)) - set(ks))
    if missing:
        return f"only {len(ks)} of {n} shards: missing {', '.join(f'{k}/{n}' for k in missing)}"
    return ""


def main_merge(argv: list[str]) -> int:
    """``python -m grading merge``: join shard outputs into one OUT, as one unsharded run."""
    parser = argparse.ArgumentParser(
        prog="python -m grading merge",
        description="Join the OUT folders of `batch --shard K/N` runs into one result, "
        "identical to an unsharded run.",
    )
    parser.add_argument("shards", type=Path, nargs="+", help="the shards' OUT folders")
    parser.add_argument("--out", type=Path, required=True, help="the merged output folder")
    parser.add_argument(
        "--allow-partial", action="store_true",
        help="merge even when shards are missing (or OUT folders are not shards of one split)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for shard in args.shards:
        if not (shard / SETTINGS).is_file():
            parser.error(f"{shard} is not the OUT folder of a batch run (no {SETTINGS})")
    problem = missing_shards([json.loads((s / SETTINGS).read_text()) for s in args.shards])
    if problem and not args.allow_partial:
        parser.error(f"{problem}; merge them all, or pass --allow-partial for a partial result")
    if problem:
        print(f"merge: PARTIAL: {problem}", file=sys.stderr)
    settings: dict[str, Any] | None = None
    out = args.out.resolve()
    (out / "submissions").mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    owner: dict[str, Path] = {}
    for shard in args.shards:
        if not (shard / SETTINGS).is_file():
            parser.error(f"{shard} is not the OUT folder of a batch run (no {SETTINGS})")
        these = json.loads((shard / SETTINGS).read_text())
        if settings is not None and these.get("autograder") != settings.get("autograder"):
            parser.error(f"{shard} was graded with another autograder.zip than {args.shards[0]}")
        settings = settings or these
        for folder in sorted((shard / "submissions").glob("*/")):
            if folder.name in owner:
                parser.error(f"submission {folder.name} is in two shards: {owner[folder.name]} "
                             f"and {shard}; were they run with the same N?")  # fmt: skip
            owner[folder.name] = shard
            target = out / "submissions" / folder.name
            if target.resolve() != folder.resolve():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(folder, target)
    assert settings is not None
    settings = {**settings, "shard": ""}  # the merged result is one run, not a shard
    (out / SETTINGS).write_text(json.dumps(settings, indent=1, sort_keys=True))
    written = write_outputs(out, settings, ids=set(owner))
    print(f"merged {len(owner)} submissions from {len(args.shards)} shards into {out}:",
          ", ".join(written))  # fmt: skip
    return 0
