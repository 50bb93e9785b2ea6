#!/usr/bin/env python3
"""Reports import circles between the modules of each crate in the workspace.

The project's rule: no import circles between modules (module a uses b and b uses a). Run it
from the repository root: `python3 scripts/check-circles.py`. It prints each circle with one
reference per edge, and exits 1 when there is one. scripts/test.sh runs it.

A circle: module a uses module b and b uses a (or a longer loop a -> b -> c -> a), where a, b, c
are siblings (children of one parent module). A reference from `x::y::p` to `x::z::q` is an
edge between the siblings `y` and `z` of `x`; references between a module and its own ancestor
or descendant (a child using `super::`, a parent using its child) are the ordinary hierarchy and
are not counted. Paths are resolved through `use` re-exports, so `crate::Foo` re-exported from
`crate::store` counts as a use of `store`.

Usage: check-circles.py [ROOT]   (exit status 1 when a circle is found)

It reads `use` trees and `crate::`/`super::`/`self::` paths in code (comments, strings and
`$crate` in macros are skipped), per crate root (src/lib.rs, src/main.rs, src/bin, tests,
examples, benches). References from `#[cfg(test)]` code count too, reported as "through test
code" when the circle needs them. It is a text-level reader, not a compiler: a path it cannot
resolve (a macro-generated one, a `#[path]` module) is ignored.
"""

import os
import re
import sys
from collections import defaultdict

SKIP_DIRS = {"target", "node_modules", ".git"}

TOKEN = re.compile(
    r"""
    (?P<ident>r\#[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*)
  | (?P<path>::)
  | (?P<punct>[{}();,\[\]#*!<>=$])
  | (?P<other>\S)
    """,
    re.X,
)


def strip(src):
    """Source with comments, strings and char literals blanked out."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
            continue
        m = re.match(r'b?r(#*)"', src[i:])
        if m and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
            continue
        if c == '"' or (c == "b" and src.startswith('b"', i)):
            i += 2 if c == "b" else 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:])
            if m:
                i += m.end()
                out.append("' '")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def tokens(src):
    return [m.group(0) for m in TOKEN.finditer(strip(src))]


class Module:
    def __init__(self, path, file, test):
        self.path = path  # tuple of names from the crate root
        self.file = file
        self.test = test  # inside #[cfg(test)]
        self.children = {}  # name -> Module
        self.imports = {}  # name -> full path tuple (absolute, resolved later)
        self.refs = []  # (absolute path tuple, test, file)


def parse_use_tree(toks, i):
    """Parses a use tree starting at toks[i]; returns (list of (path, alias)), next index."""
    prefix = []
    results = []
    while i < len(toks):
        t = toks[i]
        if t == "{":
            i += 1
            while toks[i] != "}":
                sub, i = parse_use_tree(toks, i)
                results += [(tuple(prefix) + p, a) for p, a in sub]
                if toks[i] == ",":
                    i += 1
            i += 1
            return results, i
        if t == "*":
            results.append((tuple(prefix) + ("*",), None))
            return results, i + 1
        if t == "::":
            i += 1
            continue
        if re.match(r"[A-Za-z_$]", t):
            prefix.append(t)
            i += 1
            if i < len(toks) and toks[i] == "as":
                results.append((tuple(prefix), toks[i + 1]))
                return results, i + 2
            if i < len(toks) and toks[i] == "::":
                continue
            results.append((tuple(prefix), None))
            return results, i
        return results, i
    return results, i


def resolve_start(path, mod):
    """Turns a path relative to `mod` into an absolute one (None: an outside crate)."""
    here = list(mod.path)
    segs = list(path)
    if not segs:
        return None
    if segs[0] == "crate":
        here, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                here = here[:-1]
            segs = segs[1:]
    elif segs[0] in mod.children:
        pass
    elif segs[0] in mod.imports:
        target = mod.imports[segs[0]]
        if target is None:
            return None
        return tuple(target) + tuple(segs[1:])
    else:
        return None
    return tuple(here) + tuple(segs)


class Crate:
    def __init__(self, root_file):
        self.root_file = root_file
        self.modules = {}
        self.raw_uses = []  # (module, path, alias)
        self.root = self.load((), root_file, False)

    def load(self, path, file, test):
        mod = Module(path, file, test)
        self.modules[path] = mod
        try:
            src = open(file, encoding="utf-8").read()
        except OSError:
            return mod
        toks = tokens(src)
        self.walk(mod, toks, 0, len(toks), file)
        return mod

    def child_file(self, parent_file, parent_path, name):
        base = os.path.basename(parent_file)
        d = os.path.dirname(parent_file)
        if base not in ("lib.rs", "main.rs", "mod.rs") and parent_path != ():
            d = os.path.join(d, base[:-3])
        elif parent_path == () and base not in ("lib.rs", "main.rs", "mod.rs"):
            pass  # a root like tests/foo.rs: children live beside it
        for cand in (os.path.join(d, name + ".rs"), os.path.join(d, name, "mod.rs")):
            if os.path.exists(cand):
                return cand
        return None

    def walk(self, mod, toks, i, end, file):
        pending_test = False
        while i < end:
            t = toks[i]
            if t == "#" and i + 1 < end and toks[i + 1] == "[":
                j, depth = i + 1, 0
                while j < end:
                    if toks[j] == "[":
                        depth += 1
                    elif toks[j] == "]":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                attr = " ".join(toks[i:j + 1])
                if re.search(r"cfg \( (all \( )?test", attr):
                    pending_test = True
                i = j + 1
                continue
            if t == "mod" and i + 2 < end and re.match(r"[A-Za-z_]", toks[i + 1]):
                name = toks[i + 1]
                test = mod.test or pending_test
                if toks[i + 2] == ";":
                    f = self.child_file(file, mod.path, name)
                    if f:
                        child = self.load(mod.path + (name,), f, test)
                    else:
                        child = Module(mod.path + (name,), None, test)
                        self.modules[child.path] = child
                    mod.children[name] = child
                    i += 3
                    pending_test = False
                    continue
                if toks[i + 2] == "{":
                    j, depth = i + 2, 0
                    while j < end:
                        if toks[j] == "{":
                            depth += 1
                        elif toks[j] == "}":
                            depth -= 1
                            if depth == 0:
                                break
                        j += 1
                    child = Module(mod.path + (name,), file, test)
                    self.modules[child.path] = child
                    mod.children[name] = child
                    self.walk(child, toks, i + 3, j, file)
                    i = j + 1
                    pending_test = False
                    continue
            if t == "use":
                uses, j = parse_use_tree(toks, i + 1)
                for p, alias in uses:
                    self.raw_uses.append((mod, p, alias, pending_test or mod.test, file))
                i = j
                pending_test = False
                continue
            if t in ("crate", "super", "self") and i + 1 < end and toks[i + 1] == "::":
                if i > 0 and toks[i - 1] in ("$", "in", "::"):
                    i += 1
                    continue
                segs = [t]
                j = i + 1
                while j + 1 < end and toks[j] == "::" and re.match(r"[A-Za-z_]", toks[j + 1]):
                    segs.append(toks[j + 1])
                    j += 2
                # alias "" marks a path in code, not a `use`: it names nothing here.
                self.raw_uses.append((mod, tuple(segs), "", pending_test or mod.test, file))
                i = j
                continue
            if t in (";", "}", "{"):
                pending_test = False
            i += 1

    def finish(self):
        # First the imports (names a module brings in), then every reference.
        for mod, p, alias, test, file in self.raw_uses:
            if alias == "":
                continue
            if p[-1] == "*" or p[-1] == "self" and len(p) == 1:
                continue
            name = alias or (p[-2] if p[-1] == "self" else p[-1])
            if name == "_":
                continue
            p2 = p[:-1] if p[-1] == "self" else p
            mod.imports.setdefault(name, p2 if p2[0] in ("crate", "super", "self") or p2[0] in mod.children else None)
        for mod in self.modules.values():
            for name, p in list(mod.imports.items()):
                mod.imports[name] = None if p is None else resolve_start(p, _NoImports(mod))
        for mod, p, alias, test, file in self.raw_uses:
            p2 = tuple(s for s in p if s != "*")
            if p2 and p2[-1] == "self":
                p2 = p2[:-1]
            absolute = resolve_start(p2, mod)
            if absolute is None:
                continue
            target = self.target_module(absolute)
            if target is not None:
                mod.refs.append((target, test, file, "::".join(p)))

    def target_module(self, absolute, depth=0):
        """The module that defines what `absolute` names, following re-exports."""
        cur = ()
        segs = list(absolute)
        while segs and cur + (segs[0],) in self.modules:
            cur = cur + (segs.pop(0),)
        if segs and depth < 16:
            m = self.modules[cur]
            if segs[0] in m.imports and m.imports[segs[0]] is not None:
                return self.target_module(tuple(m.imports[segs[0]]) + tuple(segs[1:]), depth + 1)
        return cur


class _NoImports:
    def __init__(self, mod):
        self.path = mod.path
        self.children = mod.children
        self.imports = {}


def sccs(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def crate_roots(pkg_dir):
    roots = []
    for rel in ("src/lib.rs", "src/main.rs"):
        p = os.path.join(pkg_dir, rel)
        if os.path.exists(p):
            roots.append(p)
    for sub in ("src/bin", "tests", "examples", "benches"):
        d = os.path.join(pkg_dir, sub)
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                p = os.path.join(d, f)
                if f.endswith(".rs"):
                    roots.append(p)
                elif os.path.exists(os.path.join(p, "main.rs")):
                    roots.append(os.path.join(p, "main.rs"))
    return roots


def packages(root):
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        if "Cargo.toml" in files and os.path.isdir(os.path.join(d, "src")):
            yield d
        elif "Cargo.toml" in files and os.path.isdir(os.path.join(d, "tests")):
            yield d


def name(path):
    return "crate" + "".join("::" + p for p in path)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    seen_files = set()
    found = 0
    checked = 0
    for pkg in packages(root):
        for rf in crate_roots(pkg):
            if rf in seen_files:
                continue
            crate = Crate(rf)
            crate.finish()
            for m in crate.modules.values():
                if m.file:
                    seen_files.add(m.file)
            checked += 1
            for with_tests in (False, True):
                edges = defaultdict(set)
                why = defaultdict(list)
                for m in crate.modules.values():
                    for target, test, file, text in m.refs:
                        if test and not with_tests:
                            continue
                        a, b = m.path, target
                        k = 0
                        while k < min(len(a), len(b)) and a[k] == b[k]:
                            k += 1
                        if k == len(a) or k == len(b):
                            continue  # same module, ancestor or descendant
                        sa, sb = a[: k + 1], b[: k + 1]
                        edges[sa].add(sb)
                        why[(sa, sb)].append(f"{os.path.relpath(file, root)}: {text.removesuffix('::self')}")
                nodes = set(edges) | {w for v in edges.values() for w in v}
                for comp in sccs(sorted(nodes), edges):
                    if len(comp) < 2:
                        continue
                    if with_tests and _cycle_without_tests(crate, comp):
                        continue  # already reported by the first pass
                    found += 1
                    label = "circle" + (" (through test code)" if with_tests else "")
                    print(f"{os.path.relpath(rf, root)}: {label}: "
                          + " <-> ".join(name(c) for c in sorted(comp)))
                    for a in sorted(comp):
                        for b in sorted(edges[a]):
                            if b in comp:
                                ex = why[(a, b)]
                                print(f"    {name(a)} -> {name(b)}: {ex[0]}"
                                      + (f" (+{len(ex) - 1} more)" if len(ex) > 1 else ""))
    print(f"{checked} crate roots checked, {found} circle(s)")
    return 1 if found else 0


def _cycle_without_tests(crate, comp):
    """Whether `comp` is already a circle without test code (reported in the first pass)."""
    comp = set(comp)
    edges = defaultdict(set)
    for m in crate.modules.values():
        for target, test, _, _ in m.refs:
            if test:
                continue
            a, b = m.path, target
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k == len(a) or k == len(b):
                continue
            sa, sb = a[: k + 1], b[: k + 1]
            if sa in comp and sb in comp:
                edges[sa].add(sb)
    return any(len(c) == len(comp) for c in sccs(sorted(comp), edges))


if __name__ == "__main__":
    sys.exit(main())
