"""``report.html`` (item analysis for the instructor), ``manual.html`` (answers to grade by hand).

Both are single self-contained pages: plots are PNGs embedded as base64, no script, no server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import mistune
from markupsafe import Markup
from mistune.renderers.html import HTMLRenderer

from grading.batch.answers import MAX_CODE_CHARS
from grading.batch.tables import Row, duplicates, question_order

TEMPLATES = Path(__file__).with_name("templates")
#: A failure line of results.json: "✗ hidden check NAME: why" (the hint line under it is the
#: instructor's own text, the same for everyone, so it is not counted).
FAILED_CHECK = re.compile(r"^✗ hidden check (\w+): (.*)$", re.M)
CELL_ERROR = re.compile(r"^Your (cell .*)$", re.M)
#: copydetect's noise threshold k (tokens) and window: its defaults for code of this size.
SIMILARITY_K, SIMILARITY_WINDOW = 25, 1
#: Pairs whose answer code overlaps at least this much (both ways) are listed.
SIMILARITY_THRESHOLD = 0.6
MAX_MESSAGES = 5
#: Characters of one failure message shown (a student's exception text can be long).
MAX_MESSAGE_CHARS = 240
#: The similarity table lists at most this many pairs (the most alike first).
MAX_PAIRS = 50


@dataclass(frozen=True)
class QuestionStats:
    """One row of the per-question table."""

    name: str
    max_score: float
    graded: int
    full: int
    mean: float
    failures: list[tuple[str, int]]

    @property
    def pass_rate(self) -> float:
        return self.full / self.graded if self.graded else 0.0


def question_stats(rows: list[Row]) -> list[QuestionStats]:
    """Pass rate (full marks) and the most common failure messages of each question, over the
    submissions that were graded."""
    questions, maxima = question_order(rows)
    graded = [r for r in rows if r.record.get("status") == "graded" and r.results]
    stats = []
    for q in questions:
        scores, messages = [], Counter()
        for row in graded:
            test = next((t for t in row.results["tests"] if t["name"] == q), None)
            if test is None:
                continue
            scores.append(float(test["score"]))
            output = str(test.get("output", ""))
            for check, why in FAILED_CHECK.findall(output):
                messages[_short(f"{check}: {why.strip()}")] += 1
            for line in CELL_ERROR.findall(output):
                messages[re.sub(r"\d+", "N", line.strip())] += 1  # cell numbers differ per student
        full = sum(s >= maxima[q] - 1e-9 for s in scores)
        mean = sum(scores) / len(scores) if scores else 0.0
        top = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_MESSAGES]
        stats.append(QuestionStats(q, maxima[q], len(scores), full, mean, top))
    return stats


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def histogram_figure(totals: list[float], possible: float) -> Any:
    """The score histogram (one bar per point) as a matplotlib Figure; close it after use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    bins = max(1, int(possible) + 1)
    ax.hist(totals, bins=bins, range=(-0.5, possible + 0.5), color="#4472c4", edgecolor="white")
    ax.set_xlabel(f"total score (of {possible:g})")
    ax.set_ylabel("submissions")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 submissions
    ax.set_title("Score histogram")
    fig.tight_layout()
    return fig


def histogram_png(totals: list[float], possible: float) -> str:
    """Base64 PNG of the score histogram (one bar per point)."""
    import matplotlib.pyplot as plt

    fig = histogram_figure(totals, possible)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version: same bytes
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def similarity(rows: list[Row], boilerplate: str = "") -> list[dict[str, Any]]:
    """Pairs of submissions whose answer code cells are unusually alike, by copydetect's
    winnowing fingerprints (the code the blank notebook already holds is boilerplate and does
    not count). A hint for the instructor to look at, never a grade.

    Bounded per upload: only the first MAX_CODE_CHARS of a submission's answer code are
    fingerprinted (records of older runs may hold more), so one padded notebook costs seconds,
    not minutes; a submission whose code copydetect cannot read is left out of the table."""
    from copydetect import CodeFingerprint, compare_files

    def fingerprint(code: str, boiler: list | None = None) -> Any:
        return CodeFingerprint(
            "answers.py", SIMILARITY_K, SIMILARITY_WINDOW, boilerplate=boiler,
            fp=io.StringIO(code), language="python",
        )  # fmt: skip

    boiler = list(fingerprint(boilerplate).hashes) if boilerplate.strip() else None
    prints = []
    for row in rows:
        code = str((row.record.get("answers") or {}).get("code", ""))[:MAX_CODE_CHARS]
        if not code.strip():
            continue
        try:
            fp = fingerprint(code, boiler)
        except Exception:  # one student's code, one row of a hint: never the whole report
            continue
        if len(fp.hashes):
            prints.append((row.id, fp))
    pairs = []
    for i, (a, fa) in enumerate(prints):
        for b, fb in prints[i + 1 :]:
            overlap, (sa, sb), _slices = compare_files(fa, fb)
            if min(sa, sb) >= SIMILARITY_THRESHOLD:
                pairs.append({"a": a, "b": b, "tokens": int(overlap),
                              "a_pct": round(100 * sa), "b_pct": round(100 * sb)})  # fmt: skip
    pairs.sort(key=lambda p: (-min(p["a_pct"], p["b_pct"]), -p["tokens"], p["a"], p["b"]))
    return pairs[:MAX_PAIRS]


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every string is a student's or the grader's: escape them all
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_report(
    rows: list[Row],
    path: Path,
    *,
    title: str,
    regrade: list[dict[str, Any]] | None,
    boilerplate: str = "",
) -> None:
    """Write ``report.html``."""
    _questions, maxima = question_order(rows)
    possible = sum(maxima.values())
    graded = [r for r in rows if r.record.get("status") == "graded"]
    totals = [r.total() for r in graded]
    dup = duplicates(rows)
    problems = [
        {"id": r.id, "status": r.record.get("status", ""), "reason": r.record.get("reason", "")}
        for r in rows
        if r.record.get("status") != "graded"
    ]
    html = (
        _env()
        .get_template("report.html.j2")
        .render(
            title=title,
            n=len(rows),
            n_graded=len(graded),
            possible=possible,
            mean=sum(totals) / len(totals) if totals else 0.0,
            histogram=histogram_png(totals, possible) if totals else "",
            stats=question_stats(rows),
            problems=problems,
            duplicates=sorted(dup.items()),
            regrade=regrade,
            pairs=similarity(rows, boilerplate),
            threshold=round(100 * SIMILARITY_THRESHOLD),
            has_blank=bool(boilerplate.strip()),
        )
    )
    path.write_text(html, encoding="utf-8")


#: What the blank notebook's answer cell says until a student writes there.
PLACEHOLDER = "Type your answer here"


class _Renderer(HTMLRenderer):
    """Markdown to HTML for a student's text: raw HTML is escaped (never run), LaTeX stays
    readable source in ``<code>`` (the page is offline: no MathJax to typeset it), images show
    their alt text (no request leaves the grader's machine), and headings are bold text."""

    def inline_math(self, text: str) -> str:
        return f'<code class="math">{mistune.escape(text)}</code>'

    def block_math(self, text: str) -> str:
        return f'<pre class="math"><code>{mistune.escape(text)}</code></pre>\n'

    def image(self, text: str, url: str, title: str | None = None) -> str:
        return f"[image: {text}]"

    def heading(self, text: str, level: int, **attrs: object) -> str:
        # Bold text, never a heading: a heading in an answer looked like the page's own label of
        # the next student ("### alice", then a made-up answer: red team rt11).
        return f"<p><strong>{text}</strong></p>\n"


def render_markdown(text: str) -> Markup:
    """A student's (or the rubric's) Markdown as safe HTML; see ``_Renderer``."""
    md = mistune.create_markdown(escape=True, renderer=_Renderer(escape=True), plugins=["math"])
    return Markup(str(md(text)))


def _answer(row: Row, number: str) -> dict[str, Any]:
    """``{"state": "answer" | "none" | "unreadable", "html"}`` of one manual question."""
    found = row.record.get("answers") or {}
    if "manual" not in found or found.get("unreadable"):
        return {"state": "unreadable", "html": str(found.get("unreadable", ""))}
    text = str(found["manual"].get(number, ""))
    if not text.strip() or PLACEHOLDER in text:
        return {"state": "none", "html": ""}
    try:
        return {"state": "answer", "html": render_markdown(text)}
    except Exception:  # a parser's RecursionError on a strange answer: show the text as it is
        return {"state": "answer", "html": Markup("<pre>{}</pre>").format(text)}


def write_manual(
    rows: list[Row], path: Path, rubric: dict[str, dict[str, str]], *, anonymise: bool
) -> None:
    """Write ``manual.html``: one section per manually graded question, each student's answer
    beside the rubric. Anonymised, a submission shows as a stable code (a hash of its id), and
    the key from codes to ids goes into ``manual-key.csv`` next to the page, for entering grades."""
    entries = {}
    key = []
    for number in sorted(rubric, key=int):
        answers = []
        for row in rows:
            label = _anonym(row.id) if anonymise else _who(row)
            answers.append({"who": label, **_answer(row, number)})
        entries[number] = sorted(answers, key=lambda a: a["who"])
    if anonymise:
        key = sorted((_anonym(r.id), r.id) for r in rows)
        with open(path.with_name("manual-key.csv"), "w", encoding="utf-8") as f:
            f.write("code,submission\n" + "".join(f"{c},{i}\n" for c, i in key))
    html = (
        _env()
        .get_template("manual.html.j2")
        .render(
            rubric={n: {**r, "html": render_markdown(r["rubric"])} for n, r in rubric.items()},
            entries=entries,
            anonymise=anonymise,
        )
    )
    path.write_text(html, encoding="utf-8")


def _anonym(sid: str) -> str:
    return "S-" + hashlib.sha256(sid.encode()).hexdigest()[:8]


def _who(row: Row) -> str:
    name = row.record.get("student", {}).get("name", "")
    return f"{row.id} ({name})" if name else row.id
