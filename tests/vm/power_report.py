"""What the power cuts did (tests/vm/check-power.sh): every picture that reached done/ must
have a result at the subscriber, and a picture with more than one result must have them all
under one inspection id. Prints a Markdown table; exit status 1 when either does not hold."""

import argparse
import json
import re
import sys

# What the daemon logs when it finds something a power cut left half-written.
TORN = {
    "outbox entries quarantined": re.compile(r"^outbox: entry .* is unreadable"),
    "history entries removed (left incomplete)": re.compile(r"^history: removed .*left incomplete"),
    "recipe rebuilds cleaned up": re.compile(r"^recipe .*: removed what an interrupted rebuild left"),
}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--sub", required=True, help="mosquitto_sub -v output")
    a.add_argument("--files", required=True, help="`ls done failed` in the drop directory")
    a.add_argument("--journal", required=True, help="journalctl -u winclip-edge -o cat, every boot")
    a.add_argument("--recipe", required=True, help="the recipe directory's current link and versions")
    a.add_argument("--runs", type=int, required=True)
    a.add_argument("--boots", type=int, required=True)
    a.add_argument("--hung", type=int, default=0, help="boots that hung and were power-cycled (lib.sh)")
    args = a.parse_args()

    ids_of = {}  # picture name -> inspection ids of its results
    delivered = 0
    teach_accepted = 0
    taught_versions = set()  # recipe versions a teach completed
    with open(args.sub, encoding="utf-8", errors="replace") as f:
        for line in f:
            topic, _, payload = line.rstrip("\n").partition(" ")
            if topic == "winclip/vm/cmd/reply":
                r = json.loads(payload)
                teach_accepted += str(r.get("request_id", "")).startswith("t") and r.get("ok") is True
                continue
            if topic == "winclip/vm/state":
                t = (json.loads(payload).get("teaching") or {})
                if t.get("state") == "done":
                    taught_versions.add(t.get("version"))
                continue
            if topic != "winclip/vm/result":
                continue
            r = json.loads(payload)
            name = (r.get("file") or "").rsplit("/", 1)[-1]
            if not re.fullmatch(r"p\d+-\d+\.png", name):
                continue  # pictures of the systemd and GPIO checks
            delivered += 1
            ids_of.setdefault(name, []).append(r["id"])

    folders = {"done": [], "failed": []}
    current = None
    with open(args.files, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.endswith(":"):
                current = line[:-1]
            elif line and current in folders and re.fullmatch(r"p\d+-\d+\.png", line):
                folders[current].append(line)

    with open(args.journal, encoding="utf-8", errors="replace") as f:
        journal = f.read().splitlines()
    torn = {what: sum(1 for l in journal if rx.search(l)) for what, rx in TORN.items()}
    with open(args.recipe, encoding="utf-8") as f:
        recipe = f.read().split()

    done = folders["done"]
    missing = [n for n in done if n not in ids_of]
    two_ids = {n: sorted(set(i)) for n, i in ids_of.items() if len(set(i)) > 1}
    duplicates = sum(len(i) - 1 for i in ids_of.values())
    rows = [
        ("power cuts (qemu SIGKILL)", args.runs),
        ("boots", args.boots),
        ("boots that hung before ssh and were power-cycled (the run as a whole)", args.hung),
        ("pictures in done/", len(done)),
        ("pictures in failed/", len(folders["failed"])),
        ("results delivered for them", delivered),
        ("pictures in done/ without a result", len(missing)),
        ("duplicate deliveries (same inspection id)", duplicates),
        ("pictures with results under two ids", len(two_ids)),
    ]
    rows.append(("teach commands accepted / completed (a new version written)", f"{teach_accepted} / {len(taught_versions)}"))
    rows += [(what, n) for what, n in torn.items()]
    rows.append(("recipe: current -> (versions)", f"{recipe[0] if recipe else '?'} ({' '.join(recipe[1:])})"))
    print("| power-loss run | count |")
    print("|---|---|")
    for what, n in rows:
        print(f"| {what} | {n} |")
    ok = True
    if missing:
        print(f"done/ without a result: {missing}", file=sys.stderr)
        ok = False
    if two_ids:
        print(f"results under more than one id: {two_ids}", file=sys.stderr)
        ok = False
    if folders["failed"]:
        print(f"pictures in failed/ (a picture written and flushed before its rename): {folders['failed']}", file=sys.stderr)
        ok = False
    if taught_versions:
        # A teach announced as done made its version current durably: a cut after it
        # must not bring back the one before.
        want = f"versions/{max(taught_versions):04d}"
        if not recipe or recipe[0] != want:
            print(f"the recipe's current is {recipe[:1]}, not {want}, the last teach announced done", file=sys.stderr)
            ok = False
    if not done:
        print("no picture reached done/: the stream never ran", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
