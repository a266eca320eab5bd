"""``python -m grading SOURCE SUBMISSION RESULTS``: grade a submission into RESULTS/results.json.

(``python -m grading batch ...`` and ``... merge ...`` grade a whole class: grading/batch/.)

SOURCE is an unzipped autograder (Gradescope: /autograder/source), SUBMISSION a folder holding the
student's upload. Run as root to sandbox the kernel; ``--same-user`` grades trusted notebooks
(the solution, your own tests) as the current user without the sandbox.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from grading import results
from grading.paths import UnsafePathError, check_dir, check_new_dir
from grading.runner import Grader, GradingConfig, interrupt_on_signals
from grading.sandbox import GRADESCOPE_SOURCE, SandboxConfig, namespaces_work

#: The grader's own memory (RLIMIT_DATA, soft: the kernel's launcher sets its own). Grading the
#: solution peaks at 227 MB VmData (138 MB resident); what the kernel hands over adds at most
#: a few times runner.MAX_OUTPUT_BYTES. Past the cap a read fails with MemoryError, which costs
#: one check, instead of the container being killed.
GRADER_MEMORY_BYTES = 512 * 2**20


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()  # the run's budget and deadline count from here
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["batch"], ["merge"]):  # instructor tools (grading/batch/), not the grader
        from grading.batch import cli

        return (cli.main_batch if argv[0] == "batch" else cli.main_merge)(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m grading", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the unzipped autograder folder")
    parser.add_argument("submission", type=Path, help="folder with the student's upload")
    parser.add_argument("results", type=Path, help="folder to write results.json into")
    parser.add_argument(
        "--same-user", action="store_true", help="no sandbox user (trusted input only)"
    )
    parser.add_argument("--cell-timeout", type=float, default=SandboxConfig.cell_timeout)
    parser.add_argument("--check-timeout", type=float, default=GradingConfig.check_timeout)
    parser.add_argument(
        "--reverse-checks", action="store_true", help="run hidden checks last-first (tests only)"
    )
    parser.add_argument(
        "--uid",
        type=int,
        default=None,
        help="force this sandbox uid (runs sharing it wait for each other); default: a fresh one",
    )
    parser.add_argument(
        "--sandbox",
        choices=["auto", "require", "floor"],
        default=None,
        help="namespaces around the kernel (bubblewrap): auto = namespaces, or the floor (uid "
        "separation only) on Gradescope (source /autograder/source), refused elsewhere; "
        "require = refuse to grade without them; floor = never (you accept that the notebook "
        "can read every world-readable file of the machine)",
    )
    parser.add_argument(  # the name of the option before namespaces (issue 20); same meaning
        "--jail", choices=["auto", "require", "off"], default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    same_user = args.same_user or os.geteuid() != 0
    if same_user and not args.same_user:
        print("grading: not root, so the notebook runs as this user (no sandbox).", file=sys.stderr)
    uid = None if same_user else ("fresh" if args.uid is None else args.uid)
    if args.jail is not None and args.sandbox is not None:
        parser.error("give --sandbox only (--jail is its old name): both were given")
    isolation = args.sandbox or SandboxConfig.isolation
    if args.jail is not None:
        isolation = {"auto": "auto", "require": "require", "off": "floor"}[args.jail]
    interrupt_on_signals()  # SIGTERM/SIGINT/SIGHUP: the kernel ended, a report, clean-up
    if uid is not None:
        refused = _refusal(args.source, args.results, isolation)
        if refused is not None:
            return refused
    sandbox = SandboxConfig(cell_timeout=args.cell_timeout, uid=uid, isolation=isolation)
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or hard > GRADER_MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_DATA, (GRADER_MEMORY_BYTES, hard))
    try:
        config = GradingConfig(
            sandbox=sandbox, check_timeout=args.check_timeout, reverse_checks=args.reverse_checks
        )
        grader = Grader(args.source, config)
    except Exception:
        # A broken autograder must still leave a score behind, or Gradescope shows nothing.
        traceback.print_exc()
        message = "The autograder is misconfigured (not your fault); tell the course staff."
        results.write({"score": 0.0, "output": message, "tests": []}, args.results)
        return 1
    result = grader.grade(args.submission, args.results, start=start)
    if grader.sandbox_uid is not None:  # tests check that no process of it outlived the run
        print(f"grading: sandbox uid {grader.sandbox_uid}", file=sys.stderr)
    print(f"score {result['score']:g}: {result['output']}")
    return 0


def _refusal(source: Path, results_dir: Path, isolation: str) -> int | None:
    """The exit code when a root grading must not start (the reason goes to stderr and, where
    the results folder is safe, into results.json), else None."""
    try:
        # A results folder not made yet: its parent is checked, and nothing is created.
        (check_dir if os.path.lexists(results_dir) else check_new_dir)(results_dir)
    except UnsafePathError as err:  # nothing is written through a link another user planted
        print(f"grading: refused, and no results.json written: {err}", file=sys.stderr)
        return 2
    why = None
    try:
        check_dir(source)
    except UnsafePathError as err:
        why = str(err)
    on_gradescope = os.path.realpath(source) == str(GRADESCOPE_SOURCE)
    if why is None and isolation == "auto" and not on_gradescope:
        no_namespaces = namespaces_work()
        if no_namespaces is not None:
            why = (
                f"no namespaces here ({no_namespaces}). Without them (the floor: uid separation "
                "only) a notebook can read every world-readable file of this machine, such as a "
                "solution notebook or build/; install bubblewrap and run as root, or pass "
                "--sandbox floor to accept that"
            )
    if why is None:
        return None
    print(f"grading: refused: {why}", file=sys.stderr)
    message = f"The grader refused to run: {why}. Tell the course staff."
    results.write({"score": 0.0, "output": message, "tests": []}, results_dir)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
