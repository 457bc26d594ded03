#!/usr/bin/env python3
"""Where a kernel's warps wait, from Nsight Compute's source page.

    ncu --section SourceCounters --warp-sampling-interval 0 --kernel-name NAME \\
        --launch-skip N --launch-count M -o rep PROGRAM ...
    ncu -i rep.ncu-rep --page source --csv --print-source sass > src.csv
    scripts/ncu_stalls.py src.csv [--chunk 60] [--top 30]

Sums the warp-state samples of every profiled launch per SASS instruction, then prints runs of
--chunk instructions in program order (their share of the samples, instructions executed, the
stall reasons above 0.4% and the commonest opcodes) and the --top instructions."""
import argparse
import collections
import csv

ALL = 'Warp Stall Sampling (All Samples)'


def load(path):
    per = collections.OrderedDict()
    header = None
    for row in csv.reader(open(path, errors='replace')):
        if not row or row[0] == 'Kernel Name':
            continue
        if row[0] == 'Address':
            header = row
            continue
        if header is None or len(row) != len(header):
            continue
        entry = per.setdefault(row[0], {'src': row[1], 'n': collections.Counter()})
        for i, name in enumerate(header):
            keep = name == ALL or name == 'Instructions Executed' or (
                name.startswith('stall_') and 'Not Issued' not in name)
            if keep:
                try:
                    entry['n'][name] += float(row[i].replace(',', ''))
                except ValueError:
                    pass
    return list(per.values())


def opcode(src):
    words = src.split()
    return words[1] if words and words[0].startswith('@') and len(words) > 1 else (words[0] if words else '')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('csv')
    ap.add_argument('--chunk', type=int, default=60)
    ap.add_argument('--top', type=int, default=30)
    args = ap.parse_args()
    rows = load(args.csv)
    total = sum(r['n'][ALL] for r in rows) or 1.0
    print(f'{len(rows)} instructions, {total:.0f} samples')
    for lo in range(0, len(rows), args.chunk):
        n = collections.Counter()
        for r in rows[lo:lo + args.chunk]:
            n.update(r['n'])
        if n[ALL] / total < 0.005:
            continue
        why = ', '.join(f'{k[6:]} {100 * v / total:.1f}' for k, v in n.most_common()
                        if k.startswith('stall_') and v / total > 0.004)
        ops = collections.Counter(opcode(r['src']) for r in rows[lo:lo + args.chunk])
        print(f"{lo + 1:5d} {100 * n[ALL] / total:5.1f}% inst {n['Instructions Executed']:.0f}: {why} | "
              + ' '.join(k for k, _ in ops.most_common(5)))
    print('--- top instructions')
    order = sorted(range(len(rows)), key=lambda i: -rows[i]['n'][ALL])
    for i in order[:args.top]:
        r = rows[i]
        why = ', '.join(f'{k[6:]} {int(v)}' for k, v in r['n'].most_common(4) if k.startswith('stall_'))
        print(f"{i + 1:5d} {100 * r['n'][ALL] / total:5.1f}% {r['src'].strip()[:60]:60s} {why}")


if __name__ == '__main__':
    main()
