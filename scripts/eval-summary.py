#!/usr/bin/env python3
"""Summarise ll-eval JSON Lines (`logline eval … --output results.jsonl`): pass rate per suite
and variant, answers without evidence (accepted as `answered` with no citation and no
successful tool call: the uncited claims to check, listed by case; declines such as "I did not
recognise this" count too) and the median turn time.

    scripts/eval-summary.py results.jsonl [more.jsonl …]
"""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
if not rows:
    sys.exit("eval-summary.py: no results (give the --output files of ll-eval)")
groups = defaultdict(list)
for r in rows:
    groups[(r["suite"], r["variant"])].append(r)
for (suite, variant), rs in sorted(groups.items()):
    ran = [r for r in rs if not r.get("skipped")]
    passed = sum(1 for r in ran if r["pass"])
    uncited = [
        r["case"]
        for r in ran
        if r["outcome"] == "answered"
        and not r["citations"]
        and not any(t.get("ok") for t in r["tools"])
    ]
    median = statistics.median(r["latency_ms"] for r in ran) / 1000 if ran else 0.0
    print(
        f"{suite:<10} {variant:<10} passed {passed}/{len(ran)} ({100 * passed / max(len(ran), 1):.0f}%)"
        f"  without evidence {len(uncited)}  median turn {median:.2f} s"
    )
    for case in uncited:
        print(f"    without evidence: {case}")
