"""The review as a readable HTML page (every value escaped; no script, no outside asset).

:func:`review_html` gives a whole page; :func:`review_fragment` the ``<section>`` alone,
for a page of its own (the console) to embed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.flagged td{background:#fde2e2}
.unknown{color:#a15c00;font-style:italic}
"""


def money(amount: Mapping[str, Any] | None, currency: str = "") -> str:
    """An amount for people: 2 decimals, or "unknown" (never $0 for a cost not known)."""
    if not amount or amount.get("unknown") or amount.get("amount") is None:
        return '<span class="unknown">unknown</span>'
    value = Decimal(str(amount["amount"])).quantize(Decimal("0.01"))
    return escape(f"{value:,.2f} {currency}".strip())


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _so_far(period: Mapping[str, Any]) -> str:
    # Reviews kept before the field existed are of complete weeks.
    if period.get("complete", True):
        return ""
    return f" (under way: {_e(period['days_observed'])} days so far)"


def review_fragment(review: Mapping[str, Any]) -> str:
    cur = str(review["currency"])
    parts = [
        f'<section class="finops-review"><h1>FinOps review: {_e(review["fleet"])}, '
        f"week {_e(review['week'])}</h1>",
        f"<p>{_e(review['period']['start'])} to {_e(review['period']['end'])}"
        + _so_far(review["period"])
        + f"; amounts in {_e(cur)}"
        + "".join(f"; rate {_e(k)} {_e(v)}" for k, v in review["exchange_rates"].items())
        + f"; generated {_e(review['generated_at'])}.</p>",
        "<h2>Budget vs actual per segment</h2>",
    ]
    segs = review["segments"]
    parts.append(
        _table(
            ["Segment", "Attribution", "Budget", "Actual", "Actual / budget", "Tasks", "Flag"],
            [
                [
                    _e(s["segment"]),
                    _e(s["attribution"]),
                    money(s["budget"], cur),
                    money(s["actual"], cur),
                    "unknown" if s["ratio"] is None else _e(f"{Decimal(s['ratio']) * 100:.1f} %"),
                    _e(s["tasks"]),
                    "OVER" if s["flagged"] else "",
                ]
                for s in segs
            ],
            ["flagged" if s["flagged"] else "" for s in segs],
        )
    )
    cpt = review["cost_per_task"]
    parts.append("<h2>Cost per task</h2>")
    parts.append(
        _table(
            ["Week", "Tasks", "Cost unknown", "Cost", "Cost per task"],
            [
                [
                    _e(w["week"]),
                    _e(w["tasks"]),
                    _e(w["unknown_cost_tasks"]),
                    money(w["cost"], cur),
                    money(w["cost_per_task"], cur),
                ]
                for w in cpt["trend"]
            ],
        )
    )
    mix = review["model_mix"]
    pol = mix["policy"]
    parts.append(
        "<h2>Model mix</h2><p>Routing policy: small model under "
        f"{_e(pol['small_below_tokens'])} estimated tokens, otherwise "
        f"{_e(' or '.join(pol['otherwise']))}. Tasks off the policy: "
        f"{_e(mix['off_policy_tasks'])}.</p>"
    )
    parts.append(
        _table(
            ["Model", "Tasks", "Share", "Cost"],
            [
                [
                    _e(m["model"]),
                    _e(m["tasks"]),
                    _e(f"{Decimal(m['share']) * 100:.1f} %"),
                    money(m["cost"], cur),
                ]
                for m in mix["models"]
            ],
        )
    )
    parts.append("<h2>Most expensive tasks</h2>")
    tops = list(review["top_tasks"]) + list(review["unknown_cost_trees"])
    parts.append(
        _table(
            ["Task", "Trace", "Agents", "Sub-tasks", "Cost"],
            [
                [
                    _e(t["task_id"]),
                    _e(t["trace_id"] or ""),
                    _e(", ".join(t["agents"])),
                    _e(len(t["tasks"]) - 1),
                    money(t["cost"], cur),
                ]
                for t in tops
            ],
        )
    )
    d = review["volume_discounts"]
    parts.append(
        f"<h2>Volume discounts ({_e(d['tool'])})</h2><p>Calls this week: "
        f"{_e(d['weekly_calls'])}. The gateway reports discounts but does not apply them: "
        f"captured {money(d['captured'], cur)}. Available at each agent's own volume "
        f"{money(d['available'], cur)}; consolidated into one agent "
        f"{money(d['consolidated'], cur)} (saving {money(d['saving_by_consolidating'], cur)}).</p>"
    )
    if d["tiers"]:
        parts.append(
            _table(
                ["Quantity", "Discount"],
                [[_e(t["quantity"]), _e(f"{t['discount_pct']} %")] for t in d["tiers"]],
            )
        )
    parts.append(economics_fragment(review["economics"], cur))
    parts.append("</section>")
    return "\n".join(parts)


def economics_fragment(econ: Mapping[str, Any], currency: str) -> str:
    rows = []
    for s in econ["segments"]:
        i = s["inputs"]
        rows.append(
            [
                _e(s["segment"]),
                _e(i["agents"]),
                _e(i["tasks_per_day"]),
                money(i["cost_per_call"], currency),
                money(i["provisioning_per_month"], currency),
                money(i["monitoring_overhead_per_month"], currency),
                money(s["monthly_cost"], currency),
                money(s["monthly_value"], currency),
                "unknown" if s["roi"] is None else _e(f"{Decimal(s['roi']) * 100:.1f} %"),
                "none"
                if s["break_even_tasks_per_day"] is None
                else _e(s["break_even_tasks_per_day"]),
            ]
        )
    return (
        f"<h2>Fleet economics</h2><p>{_e(econ['formula'])}; monitoring overhead measured "
        f"{money(econ['monitoring_overhead_per_hour'], currency)} per hour.</p>"
        + _table(
            [
                "Segment",
                "Agents",
                "Tasks/day",
                "Cost/call",
                "Provisioning/month",
                "Monitoring/month",
                "Monthly cost",
                "Monthly value",
                "ROI",
                "Break-even tasks/day",
            ],
            rows,
        )
    )


def review_html(review: Mapping[str, Any]) -> str:
    """The whole page."""
    title = f"FinOps review {review['fleet']} {review['week']}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"{review_fragment(review)}</body></html>\n"
    )
