#!/usr/bin/env python3
"""Check the escalation evaluation files (dev.jsonl, test.jsonl).

Usage: python3 tests/data/escalation/validate.py
Prints counts per category and file; exits 1 on any problem.
Standard library only.
"""
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent

ESCALATE = ["angry", "sarcastic", "rising", "cancel-threat"]
NO_ESCALATE = ["calm-complaint", "sad-news", "rude-agent", "calm-question",
               "disappointed-then-resolved"]
CATEGORIES = ESCALATE + NO_ESCALATE

# Expected number of calls per category in each file.
EXPECTED = {
    "dev": {"angry": 3, "sarcastic": 2, "rising": 3, "cancel-threat": 2,
            "calm-complaint": 4, "sad-news": 3, "rude-agent": 2,
            "calm-question": 3, "disappointed-then-resolved": 2},
    "test": {"angry": 6, "sarcastic": 5, "rising": 6, "cancel-threat": 5,
             "calm-complaint": 8, "sad-news": 5, "rude-agent": 4,
             "calm-question": 5, "disappointed-then-resolved": 4},
}

FIELDS = {"id", "category", "escalate", "escalateAt", "turns"}
PARTICIPANTS = {"CUSTOMER", "AGENT"}
MIN_TURNS, MAX_TURNS = 6, 30
# Utterances at least this long (after normalising) must not appear in both files.
LEAK_MIN_CHARS = 30

errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


def norm(text):
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def check_call(name, lineno, call, ids):
    where = f"{name}.jsonl:{lineno}"
    if not isinstance(call, dict):
        err(where, "line is not a JSON object")
        return None
    missing = FIELDS - call.keys()
    extra = call.keys() - FIELDS
    if missing:
        err(where, f"missing fields {sorted(missing)}")
        return None
    if extra:
        err(where, f"unknown fields {sorted(extra)}")

    cid = call["id"]
    if not isinstance(cid, str) or not cid:
        err(where, "id must be a non-empty string")
        return None
    where = f"{name}.jsonl:{lineno} ({cid})"
    if cid in ids:
        err(where, f"duplicate id, first seen at {ids[cid]}")
    ids.setdefault(cid, f"{name}.jsonl:{lineno}")
    if not cid.startswith(name + "-"):
        err(where, f"id should start with '{name}-'")

    cat = call["category"]
    if cat not in CATEGORIES:
        err(where, f"unknown category {cat!r}")
        return None
    if not re.fullmatch(re.escape(f"{name}-{cat}-") + r"\d{2}", cid):
        err(where, f"id should look like {name}-{cat}-NN")

    esc = call["escalate"]
    at = call["escalateAt"]
    turns = call["turns"]
    if not isinstance(esc, bool):
        err(where, "escalate must be true or false")
        return cat
    if esc != (cat in ESCALATE):
        err(where, f"escalate={esc} does not match category {cat}")

    if not isinstance(turns, list):
        err(where, "turns must be a list")
        return cat
    if not MIN_TURNS <= len(turns) <= MAX_TURNS:
        err(where, f"{len(turns)} turns, expected {MIN_TURNS}-{MAX_TURNS}")
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or set(t.keys()) != {"participant", "text"}:
            err(where, f"turn {i} must have exactly 'participant' and 'text'")
            continue
        if t["participant"] not in PARTICIPANTS:
            err(where, f"turn {i} participant {t['participant']!r} not CUSTOMER or AGENT")
        if not isinstance(t["text"], str) or not t["text"].strip():
            err(where, f"turn {i} text must be a non-empty string")
    if not any(isinstance(t, dict) and t.get("participant") == "CUSTOMER" for t in turns):
        err(where, "no CUSTOMER turn")

    if esc:
        if isinstance(at, bool) or not isinstance(at, int):
            err(where, "escalateAt must be an integer when escalate is true")
        elif not 0 <= at < len(turns):
            err(where, f"escalateAt {at} out of range (0..{len(turns) - 1})")
        elif not isinstance(turns[at], dict) or turns[at].get("participant") != "CUSTOMER":
            err(where, f"escalateAt {at} does not point at a CUSTOMER turn")
    elif at is not None:
        err(where, "escalateAt must be null when escalate is false")
    return cat


def main():
    ids = {}
    counts = {}
    texts = {}
    for name in ("dev", "test"):
        path = HERE / f"{name}.jsonl"
        counts[name] = Counter()
        texts[name] = {}
        if not path.exists():
            err(path.name, "file missing")
            continue
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    err(f"{name}.jsonl:{lineno}", "blank line")
                    continue
                try:
                    call = json.loads(line)
                except json.JSONDecodeError as e:
                    err(f"{name}.jsonl:{lineno}", f"invalid JSON: {e}")
                    continue
                cat = check_call(name, lineno, call, ids)
                if cat is not None:
                    counts[name][cat] += 1
                if isinstance(call, dict) and isinstance(call.get("turns"), list):
                    for t in call["turns"]:
                        if isinstance(t, dict) and isinstance(t.get("text"), str):
                            n = norm(t["text"])
                            if len(n) >= LEAK_MIN_CHARS:
                                texts[name].setdefault(n, call.get("id"))

    for n in sorted(texts["dev"].keys() & texts["test"].keys()):
        err("dev/test", f"utterance in both files ({texts['dev'][n]}, {texts['test'][n]}): {n!r}")

    for name in ("dev", "test"):
        for cat, want in EXPECTED[name].items():
            got = counts[name][cat]
            if got != want:
                err(f"{name}.jsonl", f"category {cat}: {got} calls, expected {want}")

    width = max(len(c) for c in CATEGORIES)
    print(f"{'category':<{width}}  {'escalate':>8}  {'dev':>4}  {'test':>4}")
    for cat in CATEGORIES:
        print(f"{cat:<{width}}  {str(cat in ESCALATE).lower():>8}  "
              f"{counts['dev'][cat]:>4}  {counts['test'][cat]:>4}")
    for label, cats in (("escalate", ESCALATE), ("no escalate", NO_ESCALATE)):
        print(f"{label:<{width}}  {'':>8}  {sum(counts['dev'][c] for c in cats):>4}  "
              f"{sum(counts['test'][c] for c in cats):>4}")
    print(f"{'total':<{width}}  {'':>8}  {sum(counts['dev'].values()):>4}  "
          f"{sum(counts['test'].values()):>4}")

    if errors:
        print(f"\n{len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("\nOK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
