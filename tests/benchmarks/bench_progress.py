"""What progress reporting costs a training loop: textmill.runtime.console.Progress per batch vs the batch itself.

Side by side in one process: a linear-classifier training step of the default form (EmbeddingBag sum over
hashed ids, Adagrad on the sparse rows; 64 documents of 200 ids, 2M buckets, 4 classes) without progress,
with progress as plain log lines (stdout not a terminal), and with a tqdm bar drawn on a pseudo-terminal.
Reports microseconds per step and the ratios, and the cost of one ``advance`` call alone (200,000 calls) in
each mode. Needs no data.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import logging
import os
import struct
import sys
import termios
import threading
import time

import torch
from common import report

BUCKETS, CLASSES, DOCS, IDS = 2_000_000, 4, 64, 200


def steps_per_second(steps: int, progress_factory) -> float:
    torch.manual_seed(0)
    table = torch.nn.EmbeddingBag(BUCKETS, CLASSES, mode="sum", sparse=True)
    opt = torch.optim.Adagrad(table.parameters(), lr=0.2)
    ids = torch.randint(0, BUCKETS, (DOCS * IDS,))
    offsets = torch.arange(0, DOCS * IDS, IDS)
    labels = torch.randint(0, CLASSES, (DOCS,))
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.sparse.check_sparse_tensor_invariants(enable=False), progress_factory(steps) as progress:
        started = time.perf_counter()
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(table(ids, offsets), labels)
            loss.backward()
            opt.step()
            progress.advance(epoch=f"{step // 100 + 1}/4", loss=round(loss.item(), 4))
        return steps / (time.perf_counter() - started)


def advance_seconds(progress, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        progress.advance(epoch="1/4", loss=0.1234)
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    os.environ["TEXTMILL_VERBOSITY"] = "normal"
    logging.getLogger("textmill").setLevel(logging.WARNING)
    from textmill.runtime import console

    class Off:
        def __init__(self, steps):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def advance(self, n=1, **fields):
            return None

    def lines(steps):
        console.LINE_EVERY_SECONDS = 10.0
        return console.Progress("training", steps, unit="batches")

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    terminal = os.fdopen(slave, "w")
    drawn = []

    def drain():  # read what the bar draws, so the terminal never fills up and blocks the writer
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.append(len(chunk))

    threading.Thread(target=drain, daemon=True).start()

    def bar(steps):
        sys.stderr = terminal  # a pseudo-terminal: Progress draws a real tqdm bar into it
        return console.Progress("training", steps, unit="batches")

    result = {"steps": args.steps, "docs_per_step": DOCS, "ids_per_doc": IDS, "buckets": BUCKETS}
    real_stderr, real_stdout = sys.stderr, sys.stdout
    rates = {}
    try:
        for name, factory in [("off", Off), ("lines", lines), ("bar", bar), ("off_again", Off)]:
            sys.stdout = io.StringIO() if name == "lines" else real_stdout  # the plain lines go to stdout
            rates[name] = steps_per_second(args.steps, factory)
            sys.stderr, sys.stdout = real_stderr, real_stdout
            result[f"{name}_us_per_step"] = round(1e6 / rates[name], 1)
        # The call alone, many times: what each batch pays.
        calls = 200_000
        sys.stdout = io.StringIO()
        with lines(calls) as progress:
            result["advance_us_lines"] = round(1e6 * advance_seconds(progress, calls), 3)
        with bar(calls) as progress:
            result["advance_us_bar"] = round(1e6 * advance_seconds(progress, calls), 3)
        sys.stderr, sys.stdout = real_stderr, real_stdout
        time.sleep(0.2)
        result["bar_bytes_drawn"] = sum(drawn)
    finally:
        sys.stderr, sys.stdout = real_stderr, real_stdout
    baseline = (rates["off"] + rates["off_again"]) / 2
    result["ratio_lines_over_off"] = round(rates["lines"] / baseline, 3)
    result["ratio_bar_over_off"] = round(rates["bar"] / baseline, 3)
    report("bench_progress", result)


if __name__ == "__main__":
    main()
