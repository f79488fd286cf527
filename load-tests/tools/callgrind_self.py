#!/usr/bin/env python3
"""Per-request figures from one callgrind dump: the total instructions, each
function's own (self) instructions, and who calls one function (`--callers`).

    callgrind_self.py DUMP REQUESTS [TOP=14]
    callgrind_self.py DUMP REQUESTS --callers NAME [TOP=5]

callgrind_annotate 3.19 gives a dump taken with `callgrind_control -d` after a
`-z` all of its cost under `clone` (the threads' root, on the stack through the
dump), so the dump's cost lines are read here: a cost line after `calls=` is
the inclusive cost of that call, not the function's own.
"""
import collections
import re
import sys

NAMED = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?$")


def read(path, callee=None):
    """(total, self cost by function, {caller: [instructions, calls]} of callee)."""
    names, own = {}, collections.Counter()
    callers = collections.defaultdict(lambda: [0, 0])
    total, fn, cfn, calls = 0, None, None, None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("summary:"):
                total = int(line.split()[1])
                continue
            m = NAMED.match(line)
            if m:
                if m.group(3) is not None:
                    names[m.group(2)] = m.group(3)
                name = names.get(m.group(2), m.group(2))
                if m.group(1) == "fn":
                    fn = name
                else:
                    cfn = name
                continue
            if line.startswith("calls="):
                calls = int(line[6:].split()[0])
                continue
            if not line or not (line[0].isdigit() or line[0] in "+-*"):
                continue
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if calls is not None:
                if callee is not None and cfn == callee:
                    callers[fn][0] += cost
                    callers[fn][1] += calls
                calls = None
            else:
                own[fn] += cost
    return total, own, callers


def main():
    path, n = sys.argv[1], float(sys.argv[2])
    if len(sys.argv) > 4 and sys.argv[3] == "--callers":
        _, _, callers = read(path, sys.argv[4])
        top = int(sys.argv[5]) if len(sys.argv) > 5 else 5
        ranked = sorted(callers.items(), key=lambda kv: -kv[1][0])[:top]
        for name, (cost, calls) in ranked:
            print(f"{cost / n:8.0f} {calls / n:6.2f} calls  {name}")
        return
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 14
    total, own, _ = read(path)
    print(f"{total / n:.0f}")
    for name, cost in own.most_common(top):
        short = name if len(name) <= 90 else name[:87] + "..."
        print(f"{cost / n:8.0f}  {short}")


if __name__ == "__main__":
    main()
