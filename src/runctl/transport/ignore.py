"""Ignore files (.gitignore at every level, .runctlignore) as one ordered list of rsync filter rules.

Git lets the last matching line win and deeper files override shallower ones; rsync lets the first
matching rule win. So deeper files come first, and each file's lines are reversed. `!pattern`
becomes an include. The rules travel to the receiving side too, so files the host wrote that match
them are protected from --delete, exactly like files git would ignore.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

IGNORE_FILES = (".gitignore", ".runctlignore")
NEVER_WALKED = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".runctl", ".mypy_cache"})


def parse_line(line: str) -> tuple[str, bool, bool, bool] | None:
    """(pattern, negated, dir_only, anchored) of one ignore-file line, or None for blanks and comments."""
    if line.endswith("\n"):
        line = line[:-1]
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(line) > len(stripped):
        stripped += " "  # an escaped trailing space is part of the pattern
    line = stripped
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    if line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    return line.lstrip("/"), negated, dir_only, anchored


def rules_for(directory: str, lines: list[str]) -> list[str]:
    """rsync rules for one ignore file in `directory` (relative, "" for the root), highest priority first."""
    prefix = "/" + directory + "/" if directory else "/"
    out: list[str] = []
    for raw in reversed(lines):
        parsed = parse_line(raw)
        if parsed is None:
            continue
        pattern, negated, dir_only, anchored = parsed
        deep = pattern.startswith("**/")  # "**/x" is x at any depth below this file's directory
        if deep:
            pattern = pattern[3:]
            anchored = "/" in pattern
        if anchored and not deep:
            patterns = [prefix + pattern]
        elif directory or anchored:
            patterns = [prefix + pattern, prefix + "**/" + pattern]
        else:
            patterns = [pattern]  # a bare name at the root matches at any depth in rsync too
        # In rsync "/**/" needs at least one directory; git's also matches none.
        patterns += [p.replace("/**/", "/") for p in patterns if "/**/" in p]
        suffix = "/" if dir_only else ""
        out += ["%s %s%s" % ("+" if negated else "-", p, suffix) for p in dict.fromkeys(patterns)]
    return out


def _pruned(name: str, rel: str, simple_excludes: list[tuple[str, str]]) -> bool:
    """Whether a directory is ignored by a plain basename pattern, so the walk need not enter it."""
    return any((not base or rel.startswith(base + "/")) and fnmatch.fnmatch(name, pat) for base, pat in simple_excludes)


def collect(root: Path) -> list[str]:
    """All rules for the project at `root`, ordered for rsync (first match wins)."""
    per_dir: list[tuple[int, str, list[str]]] = []
    simple: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        rules: list[str] = []
        for name in IGNORE_FILES:
            if name not in filenames:
                continue
            try:
                lines = (Path(dirpath) / name).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            # .runctlignore is listed second in IGNORE_FILES but must take precedence: prepend it.
            rules = rules_for(rel, lines) + rules if name == ".runctlignore" else rules + rules_for(rel, lines)
            for line in lines:
                parsed = parse_line(line)
                if parsed and not parsed[1] and not parsed[3]:
                    simple.append((rel, parsed[0]))
        if rules:
            per_dir.append((rel.count("/") + (1 if rel else 0), rel, rules))
        dirnames[:] = [
            d for d in dirnames if d not in NEVER_WALKED and not _pruned(d, (rel + "/" + d) if rel else d, simple)
        ]
    per_dir.sort(key=lambda item: (-item[0], item[1]))
    return [rule for _, _, rules in per_dir for rule in rules]
