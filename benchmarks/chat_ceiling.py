"""How often the base model answers in the chat form what it knows in plain text: the reference for
Beacon's chat-form recall. Prints numbers, asserts nothing.

    python benchmarks/chat_ceiling.py [--model ID] [FILE ...]

For each probe file (default: every shipped probe set), the facts the model recalls as plain completions
(`recall_table`), then the share of those it also recalls in the chat form Beacon measures edits with
(`chat_form`: the user asks, through the chat template, to complete the sentence; `chat_table` reads the
reply). A fact the model already holds and still misses in this form is a miss of the form, not of the
knowledge: an edit's chat recall well above this share is not expected from this model.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from beacon.config import DEFAULT_MODEL  # noqa: E402
from beacon.data.facts import load_facts  # noqa: E402
from beacon.measure.evaluate import chat_table, recall_table  # noqa: E402
from beacon.method.rewordings import chat_form  # noqa: E402
from beacon.model.models import load_model  # noqa: E402

FILES = ["assets/probes.csv", "assets/probes_general.csv", "benchmarks/heldout/probes.csv",
         "benchmarks/fresh/probes.csv", "benchmarks/fresh/same_subject.csv",
         "benchmarks/same_subject/counterfactual.csv"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", default=FILES)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    a = ap.parse_args()
    model, tok, _ = load_model(a.model)
    print("| probe set | facts | known in plain text | of those, recalled in the chat form |")
    print("|---|---|---|---|")
    total = [0, 0]
    for name in a.files:
        facts = load_facts(ROOT / name)
        plain = recall_table(model, tok, [f.prompt for f in facts], [f.target for f in facts])
        known = [f for f, r in zip(facts, plain) if r["recalled"]]
        chat = chat_table(model, tok, [chat_form(tok, f) for f in known], [f.target for f in known],
                          [f.prompt for f in known])
        hits = sum(bool(c and c["recalled"]) for c in chat)
        total[0] += len(known)
        total[1] += hits
        print(f"| {name} | {len(facts)} | {len(known)} | {hits} ({100 * hits / max(1, len(known)):.0f}%) |")
    print(f"| all | | {total[0]} | {total[1]} ({100 * total[1] / max(1, total[0]):.0f}%) |")


if __name__ == "__main__":
    main()
