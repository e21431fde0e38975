"""One self-contained HTML page from a crosscheck file or a result file (`onnxattack report X --html R.html`).

The page needs nothing but itself: pictures are inlined (PNG data: URIs, inline SVG), the style is one
<style> element, there is no script, and a Content-Security-Policy forbids any fetch but data: images.
Every string taken from the file (model and label names, paths, metadata) is escaped: the file is input
and may be hostile. The page is written through safety.atomic_write: an old report stays whole until
the new one is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from .report import format_summary
from .report_draw import histogram, image_panels, vector_plot
from .report_views import (
    CheckView,
    Example,
    MemberView,
    RunView,
    Verdict,
    describe_match,
    is_crosscheck,
    read_check,
    read_result,
)
from .safety import atomic_write, check_plain_output

__all__ = ["check_html_output", "render_check", "render_result", "write_html"]

_FOCUS = 12  # label columns per verdict table: all labels when this few, else those that matter
_LONG = 400  # characters of a setting shown before it is cut

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1180px;color:#222;
padding:0 16px;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:32px;border-bottom:2px solid #d9622b}
h3{font-size:1.05em;margin:18px 0 6px}.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 7px;text-align:left;vertical-align:top}th{background:#f3f3f3}
table.matrix td{text-align:center;min-width:64px;font-variant-numeric:tabular-nums}
td.na{background:#eee;color:#888}.lead{font-size:1.05em;background:#fdf3ec;border-left:4px solid #d9622b;
padding:8px 12px}.example{border:1px solid #ddd;border-radius:6px;padding:10px;margin:12px 0}
.panels{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-end}.panels figure{margin:0;text-align:center}
.panels img{image-rendering:pixelated;border:1px solid #bbb}figcaption{font-size:12px;color:#444}
td.hit{background:#e3f1dc}td.miss{background:#fbe3df}b.on{color:#000}.muted{color:#777}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;word-break:break-all}
details{margin:6px 0}summary{cursor:pointer}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def check_html_output(html: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The page's path, checked before any work (like --png: an earlier report is replaced, whole)."""
    return check_plain_output(html, (".html", ".htm"), inputs, overwrite=True, what="HTML report",
                              create_folder=True)


def write_html(results: str | os.PathLike, out: str | os.PathLike, examples: int = 4) -> Path:
    """Read RESULTS (a crosscheck file or a result file) and write its page to OUT (checked already)."""
    if is_crosscheck(results):
        page = render_check(read_check(results, examples))
    else:
        page = render_result(read_result(results, examples))
    with atomic_write(out) as temp:
        temp.write_text(page, encoding="utf-8")
    return Path(out)


# --- pieces ---------------------------------------------------------------------------------------
def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body)
            + "\n<p class=\"muted\">Written by <code>onnxattack report --html</code>: one file, no script, "
              "nothing fetched.</p>\n</body></html>\n")


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    """Cells are HTML already (callers escape what came from the file)."""
    head = "<tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table{f' class={css!r}' if css else ''}>{head}{body}</table>"


def _setting(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    cut = text if len(text) <= _LONG else text[:_LONG] + f"\u2026 ({len(text)} characters)"
    return f"<code>{_e(cut)}</code>"


def _settings_table(settings: dict[str, Any]) -> str:
    return _table(["setting", "value"], [[_e(key), _setting(value)] for key, value in settings.items()])


def _colour(value: float, dark: tuple[int, int, int]) -> str:
    """White at 0 to `dark` at 1."""
    t = min(max(value, 0.0), 1.0)
    r, g, b = (round(255 + (channel - 255) * t) for channel in dark)
    ink = "#fff" if t > 0.55 else "#111"
    return f"background:rgb({r},{g},{b});color:{ink}"


def _heatmap(names: list[str], matrix: np.ndarray, percent: bool, what: str) -> str:
    """A matrix as a table with coloured cells: shares in [0, 1] blue, other values scaled to their largest
    in orange; undefined (NaN) cells grey."""
    finite = matrix[np.isfinite(matrix)]
    largest = float(np.abs(finite).max()) if finite.size else 1.0
    rows = []
    for i, name in enumerate(names):
        cells = [f"<th>{_e(name)}</th>"]
        for j, other in enumerate(names):
            value = float(matrix[i, j])
            tip = _e(f"{name} \u2192 {other}: {what}")
            if not np.isfinite(value):
                cells.append(f'<td class="na" title="{tip}: undefined">\u2013</td>')
                continue
            text = f"{value:.1%}" if percent else f"{value:.3g}"
            style = _colour(value, (8, 81, 156)) if percent else _colour(abs(value) / (largest or 1.0),
                                                                           (166, 54, 3))
            cells.append(f'<td style="{style}" title="{tip}">{text}</td>')
        rows.append(cells)
    header = ["", *(_e(name) for name in names)]
    head = "".join(f"<th>{cell}</th>" for cell in header)
    return (f'<table class="matrix"><tr>{head}</tr>'
            + "".join("<tr>" + "".join(row) + "</tr>" for row in rows) + "</table>")


def _label_set(labels: list[str], pred: np.ndarray | None, most: int = 8) -> str:
    if pred is None:
        return '<span class="muted">not stored</span>'
    chosen = [labels[i] if i < len(labels) else str(i) for i in np.flatnonzero(pred == 1)]
    if not chosen:
        return "\u2205"
    more = f", +{len(chosen) - most} more" if len(chosen) > most else ""
    return "{" + _e(", ".join(chosen[:most]) + more) + "}"


def _focus(example: Example, count: int) -> list[int]:
    """All labels when few; else the labels the target changes, then the target's, then those any model
    predicts on the adversarial input, then the highest adversarial scores of the crafting model."""
    if count <= _FOCUS:
        return list(range(count))
    own = example.verdicts[0]
    target = example.target.astype(bool)
    clean = own.clean_pred == 1 if own.clean_pred is not None else np.zeros(count, dtype=bool)
    ordered: list[int] = []
    groups = [np.flatnonzero(target != clean), np.flatnonzero(target),
              *(np.flatnonzero(verdict.adv_pred == 1) for verdict in example.verdicts),
              np.argsort(-np.nan_to_num(own.adv_scores, nan=-np.inf))]
    for group in groups:
        for index in group:
            if int(index) not in ordered and len(ordered) < _FOCUS:
                ordered.append(int(index))
    return sorted(ordered)


def _score(value: float, on: int) -> str:
    if on < 0 or not np.isfinite(value):
        return "\u2013"
    text = f"{value:.3f}"
    return f'<b class="on">{text}</b>' if on == 1 else text


def _verdict_row(verdict: Verdict, example: Example, labels: list[str], focus: list[int], crafted: bool,
                 per_label: bool) -> list[str]:
    name = _e(verdict.model) + (' <span class="muted">(crafted on)</span>' if crafted else "")
    reached = '<td class="hit">yes</td>' if verdict.reached else '<td class="miss">no</td>'
    cells = [name, reached, _label_set(labels, verdict.clean_pred), _label_set(labels, verdict.adv_pred)]
    for k in focus:
        adv_on = int(verdict.adv_pred[k]) if k < len(verdict.adv_pred) else -1
        clean = "" if verdict.clean_scores is None or verdict.clean_pred is None else \
            _score(float(verdict.clean_scores[k]), int(verdict.clean_pred[k])) + " \u2192 "
        adv = _score(float(verdict.adv_scores[k]), adv_on) if k < len(verdict.adv_scores) else "\u2013"
        css = "" if adv_on < 0 or not per_label else \
            (' class="hit"' if adv_on == int(example.target[k]) else ' class="miss"')
        cells.append(f"<td{css}>{clean}{adv}</td>")
    return cells


def _label_head(labels: list[str], example: Example, k: int, per_label: bool) -> str:
    name = labels[k] if k < len(labels) else str(k)
    if not per_label:
        return _e(name)
    own = example.verdicts[0]
    want, had = int(example.target[k]), int(own.clean_pred[k]) if own.clean_pred is not None else -1
    mark = " \u25b2" if want == 1 and had == 0 else (" \u25bc" if want == 0 and had == 1 else "")
    return _e(name) + (f' <span title="the target turns it {"on" if want else "off"}">{mark}</span>' if mark else "")


def _example(example: Example, labels: list[str], per_label: bool) -> str:
    """per_label: a classification target (a label vector, compared label by label); a ranking target is a
    set for the top k, judged as a whole."""
    panels = image_panels(example.x, example.x_adv)
    if panels is not None:
        pictures = "".join(f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption>'
                           "</figure>" for caption, uri in panels)
    else:
        pictures = f"<figure>{vector_plot(example.x, example.x_adv)}</figure>"
    focus = _focus(example, len(labels))
    header = ["model", "target reached", "clean prediction", "adversarial prediction",
              *(_label_head(labels, example, k, per_label) for k in focus)]
    rows = [_verdict_row(verdict, example, labels, focus, i == 0, per_label)
            for i, verdict in enumerate(example.verdicts)]
    legend = ("green: as the target wants, red: not; \u25b2 / \u25bc: the target turns the label on / off"
              if per_label else "a ranking target: a label set for the top k, judged as a whole")
    shown = "" if len(focus) == len(labels) else f" (showing {len(focus)} of {len(labels)} labels)"
    return (f'<div class="example"><h3>input #{example.index}: target {_label_set(labels, example.target)}, '
            f"L2 {example.l2:.4g}, L\u221e {example.linf:.4g}</h3>"
            f'<div class="panels">{pictures}</div>'
            f"<p class=\"muted\">scores clean \u2192 adversarial{shown}; bold: predicted on; {legend}.</p>"
            + _table(header, rows) + "</div>")


def _run_line(run: RunView) -> str:
    summary = run.summary

    def num(key: str) -> str:
        value = summary.get(key)
        return "\u2013" if value is None else f"{value:.4g}"

    return (f"{_e(summary.get('method'))} / target {_e(summary.get('target'))}: success "
            f"{summary.get('success_rate', 0.0):.1%} ({summary.get('successes')} of {summary.get('attacked')} "
            f"attacked inputs), L2 mean {num('l2_mean')} / median {num('l2_median')}, "
            f"L\u221e mean {num('linf_mean')} / median {num('linf_median')}")


def _examples(run: RunView) -> str:
    if not run.examples:
        return '<p class="muted">no attacked inputs to show</p>'
    per_label = run.settings.get("task", "classification") == "classification"
    return "\n".join(_example(example, run.labels, per_label) for example in run.examples)


# --- a crosscheck file ----------------------------------------------------------------------------
def _off_diagonal(matrix: np.ndarray, pick: str) -> tuple[int, int, float] | None:
    best: tuple[int, int, float] | None = None
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            value = float(matrix[i, j])
            if i == j or not np.isfinite(value):
                continue
            if best is None or (value < best[2] if pick == "min" else value > best[2]):
                best = (i, j, value)
    return best


def _findings(view: CheckView) -> list[str]:
    """The page's answer in a few sentences: the least agreeing pair, the largest score gap, the weakest
    and strongest transfer."""
    names = [member.name for member in view.members]
    lines = []
    low = _off_diagonal(view.agreement, "min")
    if low is None:
        lines.append("One model only: nothing to compare.")
    elif low[2] >= 1.0:
        lines.append("On clean inputs every pair of models predicts equal label sets on every input.")
    else:
        i, j, value = low
        lines.append(f"On clean inputs the least agreeing pair is <b>{_e(names[i])}</b> and <b>{_e(names[j])}</b>: "
                     f"equal predicted label sets on {value:.1%} of the inputs.")
    gap = _off_diagonal(view.max_score_diff, "max")
    if gap is not None:
        i, j, value = gap
        lines.append(f"The largest clean score difference is {value:.3g} (<b>{_e(names[i])}</b> vs "
                     f"<b>{_e(names[j])}</b>).")
    weak, strong = _off_diagonal(view.transfer, "min"), _off_diagonal(view.transfer, "max")
    if weak is not None and weak[2] >= 1.0:
        lines.append("Every adversarial input reaches its target on every other model as well.")
    elif weak is not None and strong is not None:
        i, j, value = weak
        own = view.transfer[i, i]
        lines.append(f"Adversarial inputs crafted on <b>{_e(names[i])}</b> reach their target on "
                     f"<b>{_e(names[j])}</b> for only {value:.1%} of the attacked inputs (on {_e(names[i])} "
                     f"itself: {own:.1%}); the best carry-over is {strong[2]:.1%} "
                     f"({_e(names[strong[0]])} \u2192 {_e(names[strong[1]])}).")
    missing = [member.name for member in view.members if member.run is None]
    if missing:
        lines.append("Not attacked: " + _e(", ".join(missing)) + " (their transfer rows are empty).")
    return lines


def _models_table(view: CheckView) -> str:
    rows = []
    for member in view.members:
        attacked = "yes" if member.run is not None else f'no: {_e(member.reason or "no run stored")}'
        rows.append([f"<b>{_e(member.name)}</b>", _e(member.role), f"<code>{_e(member.path)}</code>",
                     f"<code title=\"{_e(member.sha256)}\">{_e(member.sha256[:12])}</code>", attacked,
                     _e(member.mapping.get("description", "?")), _e(describe_match(member.label_match))])
    return _table(["model", "role", "file", "sha256", "attacked", "input mapping (from the reference's rows)",
                   "labels"], rows)


def _mapping_rows(member: MemberView) -> list[str]:
    mapping = member.mapping

    def field(key: str) -> str:
        return _e(json.dumps(mapping.get(key), default=str)) if key in mapping else "\u2013"

    return [f"<b>{_e(member.name)}</b>", field("source_shape"), field("shape"), field("axes"), field("layouts"),
            field("source_range"), field("target_range"), field("dtype")]


def _label_details(member: MemberView, labels: list[str]) -> str:
    match = member.label_match
    pairs = [pair for pair in match.get("pairs", []) if isinstance(pair, list) and len(pair) == 2]
    renamed = [[_e(a), _e(b)] for a, b in pairs if a != b]
    parts = [f"<p><b>{_e(member.name)}</b>: {_e(describe_match(match))}</p>"]
    if renamed:
        parts.append(_table(["reference label", f"label of {_e(member.name)}"], renamed[:200]))
        if len(renamed) > 200:
            parts.append(f'<p class="muted">{len(renamed) - 200} more pairs not shown</p>')
    return "".join(parts)


def render_check(view: CheckView) -> str:
    attrs = view.attrs
    names = [member.name for member in view.members]
    reference = attrs.get("reference", names[0] if names else "?")
    title = f"Crosscheck of {reference}: {len(names)} models on {attrs.get('n_inputs', '?')} inputs"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">{_e(view.path)} \u00b7 {_e(attrs.get("method"))} / target {_e(attrs.get("target"))}, '
            f'seed {_e(attrs.get("seed"))} \u00b7 created {_e(attrs.get("created"))}'
            + ("" if attrs.get("complete") else " \u00b7 <b>incomplete</b>") + "</p>",
            '<div class="lead"><p>Do the deployments of one model agree on clean inputs, and do adversarial '
            "inputs found on one of them hold on the others?</p><ul>"
            + "".join(f"<li>{line}</li>" for line in _findings(view)) + "</ul></div>",
            "<h2>Models</h2>", _models_table(view),
            "<h2>Clean agreement</h2>",
            "<p>Share of the inputs whose predicted label sets are equal on the labels both models share.</p>",
            _heatmap(names, view.agreement, True, "clean inputs with equal label sets"),
            "<h3>Largest clean score difference</h3>",
            "<p>The largest |score difference| over every input and shared label (raw scores).</p>",
            _heatmap(names, view.max_score_diff, False, "largest clean score difference"),
            "<h2>Transfer</h2>",
            "<p>Row: the model the adversarial inputs were crafted on; column: the model that judged them in "
            "onnxruntime; cell: the share of the attacked inputs whose target that model also reaches. The "
            "diagonal is each model's own success.</p>",
            _heatmap(names, view.transfer, True, "adversarial inputs reaching their target")]
    for member in view.members:
        if member.run is None:
            continue
        body += [f"<h2>Crafted on {_e(member.name)}</h2>", f"<p>{_run_line(member.run)}. Each example is shown "
                 f"in {_e(member.name)}'s own input format and label names, judged on every model.</p>",
                 _examples(member.run)]
    body += ["<h2>Input mapping</h2>", "<p>How the reference's rows were mapped into each model's input.</p>",
             _table(["model", "from shape", "to shape", "axes", "layouts", "from range", "to range", "dtype"],
                    [_mapping_rows(member) for member in view.members]),
             "<h2>Label matching</h2>",
             f"<p>The reference's labels ({len(view.labels)}): {_e(', '.join(view.labels[:60]))}"
             + (f" \u2026 (+{len(view.labels) - 60})" if len(view.labels) > 60 else "") + "</p>",
             *(_label_details(member, view.labels) for member in view.members),
             "<h2>Settings and versions</h2>", _settings_table(attrs)]
    for member in view.members:
        if member.run is not None:
            body.append(f"<details><summary>{_e(member.name)}: its run's settings and versions</summary>"
                        f"{_settings_table(member.run.settings)}</details>")
    return _page(title, body)


# --- a result file --------------------------------------------------------------------------------
def _summary_table(summary: dict[str, Any]) -> str:
    """format_summary's lines as a table (one wording for the terminal and the page)."""
    rows, notes = [], []
    for line in format_summary(summary).splitlines():
        if line.startswith("note: "):
            notes.append(line[len("note: "):])
            continue
        key, _, value = line.partition("  ")
        rows.append([_e(key.strip()), _e(value.strip())])
    return _table(["", ""], rows) + "".join(f'<p class="muted">note: {_e(note)}</p>' for note in notes)


def render_result(run: RunView) -> str:
    summary = run.summary
    title = f"{run.name}: {summary.get('method')} / target {summary.get('target')}"
    transfers = summary.get("transfer", {})
    body = [f"<h1>{_e(title)}</h1>", f'<p class="sub">{_e(summary.get("file"))}</p>',
            f'<div class="lead"><p>{_run_line(run)}.</p></div>', "<h2>Summary</h2>", _summary_table(summary)]
    if transfers:
        body += ["<h2>Validated on other models</h2>",
                 _table(["model", "success", "flip", "input mapping", "labels"],
                        [[_e(name), f"{rates.get('success_rate', 0):.1%}", f"{rates.get('flip_rate', 0):.1%}",
                          _e(_description(rates.get("input_mapping"))), _e(_description(rates.get("label_match"),
                                                                                       labels=True))]
                         for name, rates in transfers.items()])]
    body += ["<h2>L2 of the successful perturbations</h2>", histogram(run.l2_success, "L2 (input units)"),
             "<h2>Examples</h2>", _examples(run), "<h2>Settings and versions</h2>", _settings_table(run.settings)]
    return _page(title, body)


def _description(raw: Any, labels: bool = False) -> str:
    """A transfer group's stored mapping or label matching (JSON) in words."""
    try:
        decoded = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        return "\u2013" if raw is None else str(raw)
    return describe_match(decoded) if labels else str(decoded.get("description", "?"))
