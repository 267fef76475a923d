"""Renderers: a plan (or an apply result) in, text out. They decide nothing.

Every renderer masks user ids unless ``show_ids`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from reconciler.masking import mask
from reconciler.plan import ListChange, Orphan, Plan

if TYPE_CHECKING:  # rendering a result needs no HTTP client loaded
    from reconciler.apply import ApplyResult

FORMAT_VERSION = 1
SAMPLE = 5  # ids shown per direction and list


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


def _seconds(value: float) -> str:
    if value < 90:
        return f"{value:,.0f} s" if value >= 10 or value == int(value) else f"{value:.1f} s"
    if value < 5400:
        return f"{value / 60:,.0f} min"
    return f"{value / 3600:,.1f} h"


def _ids(ids: Iterable[str], show_ids: bool) -> list[str]:
    return list(ids) if show_ids else [mask(i) for i in ids]


def summary_line(plan: Plan) -> str:
    """``Plan: 1 list to create, 1,200 ids to add, ... (about 12 s at the configured pacing).``"""
    if not plan.has_changes:
        return "No changes. The lists match the specs."
    s = plan.summary
    return (
        f"Plan: {_n(s.creates, 'list')} to create, {_n(s.adds, 'id')} to add, "
        f"{_n(s.removes, 'id')} to remove in {_n(s.requests, 'request')} "
        f"(about {_seconds(s.estimated_seconds)} at the configured pacing)."
    )


def _actions(change: ListChange) -> str:
    parts = []
    if change.create:
        parts.append("create list")
    if change.add:
        parts.append(f"add {_n(len(change.add), 'id')}")
    if change.remove:
        verb = "prune: remove" if change.reason == "prune" else "remove"
        parts.append(f"{verb} {_n(len(change.remove), 'id')}")
    return ", ".join(parts)


def _notes(change: ListChange, show_ids: bool) -> list[str]:
    notes = []
    if change.skipped_invalid:
        sample = ", ".join(_ids(change.invalid_sample[:SAMPLE], show_ids))
        notes.append(
            f"{_n(change.skipped_invalid, 'invalid id')} skipped, never sent"
            + (f" (e.g. {sample})" if sample else "")
        )
    if change.skipped_rejected:
        notes.append(
            f"{_n(change.skipped_rejected, 'id')} Infobip rejected before not re-sent "
            "(--retry-rejected sends them again)"
        )
    if not change.membership_known:
        notes.append(
            "imported list: ids already in Infobip but not desired are unknown to the state "
            "and cannot be removed"
        )
    return notes


def _symbol(change: ListChange) -> str:
    if change.create:
        return "+"
    if change.reason == "prune":
        return "-"
    return "~"


def _label(change: ListChange | Orphan) -> str:
    list_id = f" (list {change.list_id})" if change.list_id is not None else ""
    return f"{change.destination}/{change.name}{list_id}"


def _orphan_line(orphan: Orphan) -> str:
    if orphan.will_prune:
        action = "prune is on: it will be emptied"
    elif orphan.status == "pruned":
        action = "pruned earlier; kept so its list id is reused"
    else:
        action = (
            f"left alone; set prune: true on destination '{orphan.destination}' to empty it, "
            f"or run 'reconciler state rm {orphan.name}' to forget it"
        )
    return f"{_label(orphan)}, {_n(orphan.members, 'member')}: {action}"


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text


_SYMBOL_COLOR = {"+": "32", "~": "33", "-": "31"}


def plan_text(plan: Plan, *, show_ids: bool = False, color: bool = False) -> str:
    """The plan for people: per list what happens and how many ids, then totals."""
    style = _Style(color)
    lines: list[str] = []
    changes = plan.request_changes
    if changes:
        lines.append("reconciler will make these changes:")
        lines.append("")
    for change in changes:
        symbol = _symbol(change)
        lines.append(
            f"  {style(symbol, _SYMBOL_COLOR[symbol])} {style(_label(change), '1')}  "
            f"{_actions(change)}"
        )
        for sign, ids in (("+", change.add), ("-", change.remove)):
            if ids:
                shown = ", ".join(_ids(ids[:SAMPLE], show_ids))
                more = f" and {len(ids) - SAMPLE:,} more" if len(ids) > SAMPLE else ""
                lines.append(
                    f"      {style(sign, _SYMBOL_COLOR['+' if sign == '+' else '-'])} {shown}{more}"
                )
        lines.extend(f"      ! {note}" for note in _notes(change, show_ids))
    quiet_notes = [(c, n) for c in plan.changes if not c.has_requests for n in _notes(c, show_ids)]
    for change, note in quiet_notes:
        lines.append(f"  = {_label(change)}  no requests; {note}")
    if plan.orphans:
        lines.append("")
        lines.append("Lists in the state that no spec names (orphans):")
        lines.extend(f"  ? {_orphan_line(o)}" for o in plan.orphans)
    if plan.refused:
        lines.append("")
        lines.append(style("Refused by the safety checks:", "1;31"))
        lines.extend(f"  x {reason}" for reason in plan.refused)
    if lines:
        lines.append("")
    lines.append(style(summary_line(plan), "1"))
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def removal_warning(plan: Plan) -> str | None:
    """One sentence on what will be removed or emptied, or None."""
    removing = [c for c in plan.request_changes if c.remove]
    if not removing:
        return None
    total = sum(len(c.remove) for c in removing)
    emptied = [c for c in removing if c.desired == 0]
    parts = ", ".join(f"{c.destination}/{c.name} ({len(c.remove):,})" for c in removing)
    sentence = f"{_n(total, 'id')} will be removed from {_n(len(removing), 'list')}: {parts}."
    if emptied:
        names = ", ".join(f"{c.destination}/{c.name}" for c in emptied)
        sentence += f" Emptied: {names}."
    return sentence


STEP_SUMMARY_LIMIT = 1024 * 1024  # GitHub's cap on one step's summary, in bytes
COMMENT_LIMIT = 65_536  # GitHub's cap on a pull-request comment, in characters


def _size(text: str) -> int:
    return len(text.encode("utf-8"))  # bytes >= characters, so this fits either limit


def fit_markdown(head: list[str], body: list[str], limit: int | None) -> str:
    """Join ``head`` and ``body``, cutting ``body`` (never ``head``) to ``limit`` bytes.

    A cut leaves a visible notice right after the head and closes any open
    ``<details>`` so the page still renders.
    """
    full = "\n".join([*head, *body]) + "\n"
    if limit is None or _size(full) <= limit:
        return full
    notice = [
        "> [!NOTE]",
        f"> Detail truncated to fit the {limit:,}-byte limit of this page; the totals above "
        "are complete. Run `reconciler plan` or `reconciler show PLANFILE` for all of it.",
        "",
    ]
    out = [*head, *notice]
    used = _size("\n".join(out)) + len("\n</details>\n") + 16
    for line in body:
        used += _size(line) + 1
        if used > limit:
            break
        out.append(line)
    opened = sum(line.startswith("<details>") for line in out)
    closed = sum(line.startswith("</details>") for line in out)
    out += ["", "</details>"] * (opened - closed)
    return "\n".join(out) + "\n"


def plan_markdown(plan: Plan, *, show_ids: bool = False, limit: int | None = None) -> str:
    """The plan for a pull request: summary, warning, a table per destination, details.

    With ``limit`` (bytes), the tables and details are cut to fit with a
    notice; the summary line, warnings and refusals never are.
    """
    head = [f"**{summary_line(plan)}**", ""]
    warning = removal_warning(plan)
    if warning:
        head += ["> [!WARNING]", f"> {_md_escape(warning)}", ""]
    if plan.refused:
        head += ["> [!CAUTION]", "> **Refused by the safety checks:**"]
        head += [f"> - {_md_escape(r)}" for r in plan.refused]
        head.append("")
    out: list[str] = []
    changes = plan.request_changes
    for destination in sorted({c.destination for c in changes}):
        out += [
            f"#### Destination `{destination}`",
            "",
            "| | list | list id | add | remove | requests |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for c in (c for c in changes if c.destination == destination):
            list_id = str(c.list_id) if c.list_id is not None else "new"
            out.append(
                f"| {_symbol(c)} | {_md_escape(c.name)} | {list_id} | {len(c.add):,} | "
                f"{len(c.remove):,} | {c.requests:,} |"
            )
        out.append("")
    if plan.orphans:
        out += ["**Orphans** (in the state, named by no spec):", ""]
        out += [f"- {_md_escape(_orphan_line(o))}" for o in plan.orphans]
        out.append("")
    details = _md_details(plan, show_ids)
    if details:
        out += ["<details><summary>Per-list detail</summary>", "", *details, "</details>", ""]
    return fit_markdown(head, out, limit)


def _md_details(plan: Plan, show_ids: bool) -> list[str]:
    out: list[str] = []
    for c in plan.changes:
        notes = _notes(c, show_ids)
        if not c.has_requests and not notes:
            continue
        out += [
            f"**{_md_escape(c.destination)}/{_md_escape(c.name)}**: {_actions(c) or 'no requests'}",
            "",
        ]
        for verb, ids in (("add", c.add), ("remove", c.remove)):
            if ids:
                shown = ", ".join(f"`{i}`" for i in _ids(ids[:SAMPLE], show_ids))
                more = f" and {len(ids) - SAMPLE:,} more" if len(ids) > SAMPLE else ""
                out.append(f"- {verb}: {shown}{more}")
        out += [f"- {_md_escape(note)}" for note in notes]
        out.append("")
    return out


def _change_json(change: ListChange, show_ids: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "destination": change.destination,
        "list": change.name,
        "list_id": change.list_id,
        "create": change.create,
        "add": len(change.add),
        "remove": len(change.remove),
        "requests": change.requests,
        "known": change.known,
        "desired": change.desired,
        "reason": change.reason,
        "skipped_invalid": change.skipped_invalid,
        "skipped_rejected": change.skipped_rejected,
        "membership_known": change.membership_known,
    }
    if show_ids:
        data["add_ids"] = list(change.add)
        data["remove_ids"] = list(change.remove)
    else:
        data["samples"] = {
            "add": _ids(change.add[:SAMPLE], False),
            "remove": _ids(change.remove[:SAMPLE], False),
            "invalid": _ids(change.invalid_sample[:SAMPLE], False),
        }
    return data


def plan_data(plan: Plan, *, show_ids: bool = False) -> dict[str, Any]:
    """The plan as the stable JSON object scripts read (format_version 1)."""
    s = plan.summary
    return {
        "format_version": FORMAT_VERSION,
        "summary": {
            "creates": s.creates,
            "adds": s.adds,
            "removes": s.removes,
            "requests": s.requests,
            "estimated_seconds": s.estimated_seconds,
        },
        "changes": [_change_json(c, show_ids) for c in plan.request_changes],
        "orphans": [
            {
                "destination": o.destination,
                "list": o.name,
                "list_id": o.list_id,
                "members": o.members,
                "status": o.status,
                "will_prune": o.will_prune,
            }
            for o in plan.orphans
        ],
        "refused": list(plan.refused),
    }


def plan_json(plan: Plan, *, show_ids: bool = False) -> str:
    return json.dumps(plan_data(plan, show_ids=show_ids), indent=2) + "\n"


def render_plan(
    plan: Plan,
    fmt: str,
    *,
    show_ids: bool = False,
    color: bool = False,
    limit: int | None = COMMENT_LIMIT,
) -> str:
    """Render ``plan`` as ``text``, ``markdown`` (cut to ``limit`` bytes) or ``json``."""
    if fmt == "json":
        return plan_json(plan, show_ids=show_ids)
    if fmt == "markdown":
        return plan_markdown(plan, show_ids=show_ids, limit=limit)
    return plan_text(plan, show_ids=show_ids, color=color)


# --- apply results -------------------------------------------------------------


def _remaining_lines(result: ApplyResult) -> list[str]:
    lines = []
    for label, left in sorted(result.remaining.items()):
        parts = []
        if left.get("create"):
            parts.append("create list")
        if left.get("add"):
            parts.append(f"{_n(left['add'], 'id')} to add")
        if left.get("remove"):
            parts.append(f"{_n(left['remove'], 'id')} to remove")
        lines.append(f"  {label}: {', '.join(parts)} ({_n(left['requests'], 'request')})")
    return lines


def apply_text(result: ApplyResult, *, show_ids: bool = False) -> str:
    """What an apply did, what Infobip rejected, what failed and what remains."""
    done = (
        f"{_n(result.creates, 'list')} created, {_n(result.adds, 'id')} added, "
        f"{_n(result.removes, 'id')} removed in {_n(result.requests, 'request')}."
    )
    if result.ok:
        lines = [f"Apply complete: {done}"]
    elif result.interrupted:
        lines = [f"Apply interrupted after the request in flight: {done}"]
    else:
        lines = [f"Apply failed: {done} What succeeded is saved in the state."]
    if result.rejected:
        lines.append(
            "Rejected by Infobip (recorded; not re-sent until they leave and re-enter the "
            "cohort, or with --retry-rejected):"
        )
        lines += [f"  {line}" for line in describe_rejected(result, show_ids=show_ids)]
    if result.warnings:
        lines.append("Warnings:")
        lines += [f"  {warning}" for warning in result.warnings]
    if result.failed:
        lines.append("Failed:")
        lines += [f"  {f.destination}/{f.list}: {f.message}" for f in result.failed]
    if result.remaining or result.failed:
        lines.append("Not applied yet (run 'reconciler apply' again to finish):")
        lines += _remaining_lines(result) or ["  the failed lists above"]
    return "\n".join(lines) + "\n"


def apply_data(result: ApplyResult) -> dict[str, Any]:
    """The apply result as the stable JSON object scripts read (format_version 1)."""
    return {
        "format_version": FORMAT_VERSION,
        "applied": {
            "creates": result.creates,
            "adds": result.adds,
            "removes": result.removes,
            "requests": result.requests,
        },
        "rejected": dict(sorted(result.rejected.items())),
        "failed": [
            {"destination": f.destination, "list": f.list, "error": f.message}
            for f in result.failed
        ],
        "remaining": [{"list": label, **left} for label, left in sorted(result.remaining.items())],
        "warnings": list(result.warnings),
        "interrupted": result.interrupted,
    }


def render_apply(result: ApplyResult, fmt: str, *, show_ids: bool = False) -> str:
    if fmt == "json":
        return json.dumps(apply_data(result), indent=2) + "\n"
    return apply_text(result, show_ids=show_ids)


def apply_markdown(result: ApplyResult, *, limit: int | None = None) -> str:
    """The apply result for a CI step summary: the counts line first, then detail."""
    lines = apply_text(result).splitlines()
    head = [f"**{lines[0]}**", ""]
    body = [
        f"- {_md_escape(line.strip())}" if line.startswith("  ") else line for line in lines[1:]
    ]
    return fit_markdown(head, body, limit)


def describe_rejected(result: ApplyResult, *, show_ids: bool = False) -> list[str]:
    """One line per error type: count and masked samples."""
    lines = []
    for kind, count in sorted(result.rejected.items()):
        samples = result.rejected_samples.get(kind, [])
        shown = ", ".join(s if show_ids else mask(s) for s in samples)
        lines.append(f"{kind}: {count:,} id{'s' if count != 1 else ''} (e.g. {shown})")
    return lines
