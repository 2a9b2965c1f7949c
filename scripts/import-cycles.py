#!/usr/bin/env python3
"""Import cycles between the modules of each crate.

    scripts/import-cycles.py [REPO] [CRATE...]

Builds each crate's file-level import graph from its `use` trees and inline `crate::`/`super::`
paths (following `use crate::routes;` then `routes::spans::…`; unit-test modules ignored) and
prints its strongly connected components, and any import of `cli` from outside it. Exits 1 on
either, so CI keeps the layering: a module never imports one that imports it back, and library
code never leans on the command line.
"""
import os
import re
import sys
from collections import defaultdict
root = sys.argv[1] if len(sys.argv) > 1 else '.'
crates = sys.argv[2:] or ['ledger', 'kernels', 'server', 'testkit', 'evals']

def expand(tree):
    """Expand a use tree 'a::{b, c::{d, e}}' into paths."""
    tree = tree.strip()
    i = tree.find('{')
    if i < 0:
        return [tree.split(' as ')[0].strip()]
    prefix = tree[:i]
    inner = tree[i+1:tree.rfind('}')]
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
        else:
            depth += ch == '{'; depth -= ch == '}'; cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand(p)]
    return out

def strip_comments(t):
    # unit-test modules (`#[cfg(test)] mod tests { use super::*; }`) are not imports of the crate
    t = re.sub(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{.*', '', t, flags=re.S)
    t = re.sub(r'//[^\n]*', '', t)
    return re.sub(r'/\*.*?\*/', '', t, flags=re.S)

found = 0
for crate in crates:
    src = os.path.join(root, crate, 'src')
    files = {}
    for d, _, fs in os.walk(src):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                rel = os.path.relpath(p, src)[:-3].split('/')
                if rel[-1] in ('mod', 'lib', 'main'): rel = rel[:-1]
                files['::'.join(rel)] = p
    mods = set(files)
    g = defaultdict(set)
    for m, p in files.items():
        text = strip_comments(open(p).read())
        here = m.split('::') if m else []
        parent = here if p.endswith(('mod.rs', 'lib.rs')) else here[:-1]
        paths = []
        for u in re.finditer(r'\buse\s+([^;]+);', text):
            paths += expand(u.group(1))
        paths += re.findall(r'\b((?:crate|super)(?:::[A-Za-z_0-9]+)+)', text)
        # `use crate::routes;` then `routes::spans::router()`: follow module aliases
        for path in list(paths):
            segs = [x for x in path.replace(' ', '').split('::') if x]
            if segs and segs[0] in ('crate', 'super', 'self') and len(segs) > 1:
                alias = segs[-1] if segs[-1] != 'self' else segs[-2]
                for mm in re.finditer(r'(?<![:\w])' + re.escape(alias) + r'((?:::[A-Za-z_0-9]+)+)', text):
                    base_segs = segs[:-1] if segs[-1] == 'self' else segs
                    paths.append('::'.join(base_segs) + mm.group(1))
        for path in paths:
            segs = [s for s in path.replace(' ', '').split('::') if s]
            if not segs: continue
            if segs[0] == 'crate': base, rest = [], segs[1:]
            elif segs[0] == 'super':
                base = parent[:]; rest = segs[1:]
                while rest and rest[0] == 'super': base = base[:-1]; rest = rest[1:]
            elif segs[0] == 'self': base, rest = here if p.endswith(('mod.rs','lib.rs')) else here, segs[1:]
            else: continue
            full = base + rest
            for i in range(len(full), 0, -1):
                cand = '::'.join(full[:i])
                if cand in mods:
                    if cand != m and not cand == '' : g[m].add(cand)
                    break
    idx, low, st, on, sccs, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in sorted(mods):
        if v not in idx: sc(v)
    big = [s for s in sccs if len(s) > 1]
    found += len(big)
    # The command line only parses and prints: library code never leans on it.
    for m in sorted(mods):
        if m != 'cli' and not m.startswith('cli::'):
            for w in sorted(g[m]):
                if w == 'cli' or w.startswith('cli::'):
                    print(f"  {crate}: {m or '(root)'} imports the command-line module {w}")
                    found += 1
    print(f"{crate}: {len(mods)} files, {len(big)} import cycles")
    for s in sorted(big, key=len, reverse=True):
        print(f"  cycle of {len(s)}: {', '.join(sorted(x or '(root)' for x in s))}")
sys.exit(1 if found else 0)
