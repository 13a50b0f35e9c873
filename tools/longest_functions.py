#!/usr/bin/env python3
"""The longest Rust functions of the tree, outside tests: `tools/longest_functions.py [N]`.

A function (`async` ones too) runs from its `fn` line to the line where its braces balance
again; `#[cfg(test)]`
modules and files under `tests/` directories are skipped. Strings and comments are stripped
before counting braces, so a `{` in a format string does not count.
"""
import re
import subprocess
import sys

def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//")[0]

def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        s = strip(lines[i])
        if re.match(r"\s*#\[cfg\(test\)\]", lines[i]):
            # Skip the test module that follows.
            j, depth, opened = i + 1, 0, False
            while j < len(lines):
                t = strip(lines[j])
                depth += t.count("{") - t.count("}")
                opened = opened or "{" in t
                if opened and depth <= 0:
                    break
                j += 1
            i = j + 1
            continue
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)", s)
        if m:
            depth, opened, j = 0, False, i
            while j < len(lines):
                t = strip(lines[j])
                depth += t.count("{") - t.count("}")
                opened = opened or "{" in t
                if opened and depth <= 0:
                    break
                if not opened and t.rstrip().endswith(";"):
                    break  # a declaration without a body
                j += 1
            if opened:
                out.append((j - i + 1, f"{path}:{i + 1}", m.group(7)))
        i += 1
    return out

files = subprocess.run(["git", "ls-files", "*.rs"], capture_output=True, text=True).stdout.split()
files = [f for f in files if "/tests/" not in f and not f.startswith("tests/") and "/benches/" not in f and "/fuzz/" not in f]
rows = sorted((r for f in files for r in functions(f)), reverse=True)
for n, where, name in rows[: int(sys.argv[1]) if len(sys.argv) > 1 else 10]:
    print(f"{n:5d}  {name:<28} {where}")
