"""Instructor batch grading: a class through the sandboxed grader, a gradebook and a report.

    python -m grading batch AUTOGRADER.zip SUBMISSIONS OUT [--jobs N] [--shard K/N] [--force]
    python -m grading merge SHARD_OUT... --out OUT

Each submission is graded by ``python -m grading`` in a subprocess, on a fresh unpacked copy of the
zip, exactly as Gradescope's ``run_autograder`` does (a fresh sandbox uid per grading when run as
root). This package never imports the grader's internals: it reads only the results.json each
grading writes. See ``assignments/offline_rl/README.instructor.md`` ("Grading a whole class").
"""
