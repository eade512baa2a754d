#!/usr/bin/env python3
"""Shares of the bot's CPU samples by what they were doing, from
`perf script` output recorded with call graphs (issue 17's profiles):

    perf record -F 1999 --call-graph dwarf,65528 -p <bot pid> -o bot.data -- sleep 12
    perf script -i bot.data | python3 benches/tools/perf_shares.py [CATEGORY]

A sample counts as the store's when it is on one of sqlx's SQLite threads,
or when a frame of its stack is the store's, sqlx's or flume's (sqlx's
channels); otherwise by the first library found on its stack. With a
CATEGORY, the commonest stacks (three frames) of that category follow.
Async stacks are often cut short by the unwinder; a cut stack still names
its innermost frames, which is what the categories read.
"""
import collections
import re
import sys

WAITS = ("futex", "schedule", "finish_task_switch", "try_to_wake_up")


def samples(lines):
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            comm, frames = line.split()[0], []
        else:
            frames.append(line.strip())
    if comm:
        yield comm, frames


def symbol(frame):
    parts = frame.split(None, 1)
    name = parts[1].rsplit(" (", 1)[0] if len(parts) > 1 else frame
    return re.sub(r"\+0x[0-9a-f]+", "", name)


def has(symbols, prefixes):
    return any(s.lstrip("<").startswith(prefixes) for s in symbols)


def category(comm, frames):
    symbols = [symbol(f) for f in frames]
    text = "\n".join(symbols)
    waits = any(w in text for w in WAITS)
    if comm.startswith("sqlx"):
        if "pwrite" in text or "fsync" in text or "fdatasync" in text:
            return "store: SQLite threads: WAL writes, fsync"
        if waits:
            return "store: SQLite threads: waiting, waking"
        if "sqlite3" in text:
            return "store: SQLite threads: SQLite itself"
        return "store: SQLite threads: sqlx's worker"
    if has(symbols, ("drawbridge::store::", "sqlx", "flume::")):
        return "store: calling side: waiting, waking" if waits else "store: calling side: code, sqlx"
    if has(symbols, ("hyper", "reqwest", "h2::")):
        return "HTTP client (reqwest, hyper)"
    if has(symbols, ("tokio_tungstenite", "tungstenite", "serenity::gateway")):
        return "gateway"
    if has(symbols, ("serde_json",)):
        return "JSON"
    if has(symbols, ("tracing",)):
        return "tracing"
    if has(symbols, ("tokio::runtime", "mio::")):
        if waits or "epoll" in text:
            return "runtime: parking, waking, epoll"
        return "runtime: scheduling, timers"
    return "other"


def main():
    all_samples = list(samples(sys.stdin))
    counts = collections.Counter(category(c, f) for c, f in all_samples)
    total = len(all_samples) or 1
    print(f"samples {len(all_samples)}")
    for name, n in sorted(counts.items()):
        print(f"{100 * n / total:5.1f} %  {name}")
    if len(sys.argv) > 1:
        stacks = collections.Counter(
            " < ".join(symbol(x)[:70] for x in f[:3])
            for c, f in all_samples
            if category(c, f) == sys.argv[1]
        )
        for stack, n in stacks.most_common(30):
            print(n, stack)


if __name__ == "__main__":
    main()
