"""The soak's one table: commands by operation and status, faults by kind, re-sends, event gaps,
dead letters, and the violations (each listed under the table's last row)."""

from __future__ import annotations

from collections import Counter

from tests.soak.checker import Findings

STATUSES = ("succeeded", "failed", "rejected", "cancelled", "none")


def table(findings: Findings, faults: Counter, fault_errors: list[str], resends: Counter, header: str) -> str:
    ops = sorted({op for op, _status in findings.statuses})
    width = max([len(op) for op in ops] + [24])
    rule = "-" * (width + 2 + 11 * len(STATUSES))
    lines = [header, rule, f"{'command':<{width}}  " + "".join(f"{s:>11}" for s in STATUSES), rule]
    for op in ops:
        lines.append(f"{op:<{width}}  " + "".join(f"{findings.statuses[(op, s)]:>11}" for s in STATUSES))
    totals = [sum(n for (_op, status), n in findings.statuses.items() if status == s) for s in STATUSES]
    lines.append(f"{'all commands':<{width}}  " + "".join(f"{n:>11}" for n in totals))
    lines.append(rule)
    rows: list[tuple[str, object]] = [(f"{status} with {code}", n)
                                      for (status, code), n in sorted(findings.codes.items(), key=str)]
    rows += [(f"fault {kind}", n) for kind, n in sorted(faults.items())]
    rows.append(("faults that went wrong", len(fault_errors)))
    rows += [("re-sent: duplicates in the mix", resends["duplicate"]),
             ("re-sent: publish retried by the soak", resends["bus"]),
             ("duplicate replies", findings.duplicates),
             ("identical results published again", findings.redundant),
             ("reads answered again (a fresh read)", findings.reads_again),
             ("events read from the stream", findings.events),
             ("event sequence gaps (missing numbers)", findings.gaps)]
    rows += [(f"  accounted: {why}", n) for why, n in sorted(findings.gaps_accounted.items())]
    rows += [("dead letters (each with a reason)", findings.dead_letters),
             ("VIOLATIONS", len(findings.violations))]
    for name, value in rows:
        lines.append(f"{name:<{width + 2 + 11 * (len(STATUSES) - 1)}}{value:>11}")
    lines.append(rule)
    lines += [f"fault error: {e}" for e in fault_errors]
    lines += [f"violation: {v}" for v in findings.violations]
    return "\n".join(lines)
