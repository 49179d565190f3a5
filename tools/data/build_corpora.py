#!/usr/bin/env python3
"""Rebuild the embedded corpora under data/corpora/ from Debian packages.

    tools/data/build_corpora.py            rebuild data/corpora/ (as root, installs the
                                           Debian packages it needs; otherwise lists them)
    tools/data/build_corpora.py --check    rebuild into a temporary folder and compare
                                           byte for byte with data/corpora/
    tools/data/build_corpora.py --out DIR  write somewhere else

Three domains, each split into forget / holdout / retain / general JSONL files
({"id": ..., "text": ...} per line); see docs/data.md.

  books   the six Jane Austen novels (r-cran-janeaustenr), one document per chapter
  code    CPython 3.11 standard-library modules (libpython3.11-stdlib), one per file
  papers  Sweave/LaTeX vignettes of R packages (r-cran-*), one document per section;
          a vignette's sections always land in the same split

Only document counts and sizes are printed, never text. The output depends only on
the Debian package versions, which each domain's README.md records.
"""

import argparse
import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "data", "corpora")

SPLITS = ("forget", "holdout", "retain", "general")
# Fractions of each domain's documents; general takes what is left (about 40%).
FRACTIONS = {"forget": 0.10, "holdout": 0.10, "retain": 0.40}
SPLIT_SALT = "lethe-corpora-v1"

# --- books
NOVELS = (  # janeaustenr object name, title, year of first publication
    ("sensesensibility", "Sense and Sensibility", 1811),
    ("prideprejudice", "Pride and Prejudice", 1813),
    ("mansfieldpark", "Mansfield Park", 1814),
    ("emma", "Emma", 1815),
    ("northangerabbey", "Northanger Abbey", 1817),
    ("persuasion", "Persuasion", 1817),
)
CHAPTER_RE = re.compile(r"^(CHAPTER|Chapter) ([0-9]+|[IVXLC]+)\.?$")
VOLUME_RE = re.compile(r"^VOLUME [IVX]+$")
END_RE = re.compile(r"^(THE END|FINIS|Finis)$")
EDITORIAL_RE = re.compile(r"^A NOTE ON THE TEXT$")  # a modern edition's note closing Northanger Abbey

# --- code
PY_LIB = "/usr/lib/python3.11"
CODE_MIN, CODE_MAX = 2 * 1024, 25 * 1024
# Files the Debian copyright lists under licences other than the Python licence.
CODE_EXCLUDE = {"asynchat.py", "asyncore.py", "tarfile.py", "turtle.py"}

# --- papers: R package -> Debian package
R_PACKAGES = (
    ("sandwich", "r-cran-sandwich"),
    ("zoo", "r-cran-zoo"),
    ("lme4", "r-cran-lme4"),
    ("strucchange", "r-cran-strucchange"),
    ("lmtest", "r-cran-lmtest"),
    ("multcomp", "r-cran-multcomp"),
    ("pscl", "r-cran-pscl"),
    ("sp", "r-cran-sp"),
    ("Formula", "r-cran-formula"),
    ("xts", "r-cran-xts"),
    ("mvtnorm", "r-cran-mvtnorm"),
    ("Matrix", "r-cran-matrix"),
    ("AER", "r-cran-aer"),
)
VIGNETTE_MIN = 2048          # smaller .Rnw files are stubs that include a prebuilt PDF
SECTION_RE = re.compile(r"^\s*\\(sub)?section\*?\s*[\[{]")
SECTION_MIN = 1024           # a shorter piece is merged into its neighbour

BOOKS_PACKAGES = ["r-base-core", "r-cran-janeaustenr"]
CODE_PACKAGES = ["libpython3.11-minimal", "libpython3.11-stdlib"]
PAPERS_PACKAGES = ["r-base-core"] + [d for _, d in R_PACKAGES]
LICENSE_FILES = ["/usr/share/common-licenses/GPL-2", "/usr/share/common-licenses/GPL-3"]


def log(msg):
    print(f"build_corpora: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- Debian packages

def installed_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", pkg],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    status, _, version = r.stdout.partition("\t")
    return version if status.endswith("install ok installed") else None


def ensure_packages(pkgs, install):
    pkgs = sorted(set(pkgs))
    missing = [p for p in pkgs if installed_version(p) is None]
    if missing:
        if not install or os.geteuid() != 0:
            log(f"missing Debian packages: {' '.join(missing)}")
            log(f"install them with: sudo apt-get install -y --no-install-recommends {' '.join(missing)}")
            sys.exit(1)
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return {p: installed_version(p) for p in pkgs}


def rscript(code):
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", R_LIBS_USER="")
    r = subprocess.run(["Rscript", "--vanilla", "-e", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit("build_corpora: Rscript failed")
    return r.stdout


# ---------------------------------------------------------------- documents

def books_documents(tmp):
    """[(group, id, text)] : one document per chapter, in reading order."""
    names = ", ".join(f'"{n}"' for n, _, _ in NOVELS)
    rscript("library(janeaustenr); "
            f"for (b in c({names})) writeLines(get(b), file.path('{tmp}', paste0(b, '.txt')), useBytes = TRUE)")
    docs = []
    for key, _, _ in NOVELS:
        with open(os.path.join(tmp, key + ".txt"), encoding="utf-8") as f:
            lines = [ln.rstrip() for ln in f.read().split("\n")]
        chapters, cur = [], None
        for ln in lines:
            if EDITORIAL_RE.match(ln):
                break
            if CHAPTER_RE.match(ln):
                cur = [ln]
                chapters.append(cur)
            elif cur is not None and not VOLUME_RE.match(ln) and not END_RE.match(ln):
                cur.append(ln)
        for i, ch in enumerate(chapters, start=1):
            while ch and not ch[-1]:
                ch.pop()
            docs.append((f"{key}/ch{i:03d}", f"books/{key}/ch{i:03d}", "\n".join(ch) + "\n"))
    return docs


def code_selection():
    names = sorted(n for n in os.listdir(PY_LIB)
                   if n.endswith(".py") and n not in CODE_EXCLUDE
                   and os.path.isfile(os.path.join(PY_LIB, n)))
    return [n for n in names if CODE_MIN <= os.path.getsize(os.path.join(PY_LIB, n)) <= CODE_MAX]


def code_documents():
    docs = []
    for n in code_selection():
        with open(os.path.join(PY_LIB, n), "rb") as f:
            text = f.read().decode("utf-8")
        docs.append((n, f"code/{n}", text))
    return docs


def split_sections(text):
    """Cuts a vignette before each \\section / \\subsection line; pieces shorter than
    SECTION_MIN bytes join the next piece (the last one joins the previous). The
    pieces concatenate back to the file exactly."""
    lines = text.splitlines(keepends=True)
    pieces, cur = [], []
    for ln in lines:
        if SECTION_RE.match(ln) and cur:
            pieces.append("".join(cur))
            cur = []
        cur.append(ln)
    if cur:
        pieces.append("".join(cur))
    merged, carry = [], ""
    for p in pieces:
        p = carry + p
        if len(p.encode("utf-8")) < SECTION_MIN:
            carry = p
        else:
            merged.append(p)
            carry = ""
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    assert "".join(merged) == text
    return merged


def papers_vignettes():
    """[(r package, vignette path)] in a fixed order."""
    pkgs = ", ".join(f'"{p}"' for p, _ in R_PACKAGES)
    out = rscript(f'for (p in c({pkgs})) cat(p, system.file("doc", package = p), "\\n", sep = "\\t")')
    docdirs = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            docdirs[parts[0]] = parts[1]
    result = []
    for p, deb in R_PACKAGES:
        d = docdirs.get(p, "")
        if not d or not os.path.isdir(d):
            raise SystemExit(f"build_corpora: R package {p} ({deb}) has no doc folder")
        files = sorted(n for n in os.listdir(d) if n.endswith(".Rnw"))
        kept = 0
        for n in files:
            path = os.path.join(d, n)
            with open(path, "rb") as f:
                data = f.read()
            if len(data) < VIGNETTE_MIN or b"\\includepdf" in data:
                continue
            result.append((p, path))
            kept += 1
        if kept == 0:
            raise SystemExit(f"build_corpora: R package {p} ({deb}) ships no Sweave vignette")
    return result


def papers_documents():
    docs = []
    for p, path in papers_vignettes():
        stem = os.path.basename(path)[: -len(".Rnw")]
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        for i, piece in enumerate(split_sections(text)):
            docs.append((f"{p}/{stem}", f"papers/{p}/{stem}/s{i:02d}", piece))
    return docs


# ---------------------------------------------------------------- splits

def assign_splits(domain, docs):
    """Groups (chapters, files, vignettes) are ordered by a salted SHA-256 of their
    name; forget, holdout and retain take groups in that order until each holds its
    share of the documents; general takes the rest. Documents keep corpus order."""
    groups = []
    members = {}
    for g, _, _ in docs:
        if g not in members:
            members[g] = 0
            groups.append(g)
        members[g] += 1
    n = len(docs)
    targets = {s: max(1, round(FRACTIONS[s] * n)) for s in FRACTIONS}
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{SPLIT_SALT}/{domain}/{g}".encode()).hexdigest())
    where, counts = {}, {s: 0 for s in SPLITS}
    k = 0
    for s in ("forget", "holdout", "retain"):
        while k < len(order) and counts[s] < targets[s]:
            where[order[k]] = s
            counts[s] += members[order[k]]
            k += 1
    for g in order[k:]:
        where[g] = "general"
        counts["general"] += members[g]
    out = {s: [] for s in SPLITS}
    for g, i, t in docs:
        out[where[g]].append((i, t))
    return out


# ---------------------------------------------------------------- output

def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, t in docs:
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def split_table(splits):
    rows = ["| split | documents | UTF-8 bytes (= byte tokens) |", "|---|---:|---:|"]
    for s in SPLITS:
        docs = splits[s]
        rows.append(f"| {s} | {len(docs)} | {sum(len(t.encode('utf-8')) for _, t in docs)} |")
    total = [d for s in SPLITS for d in splits[s]]
    rows.append(f"| all | {len(total)} | {sum(len(t.encode('utf-8')) for _, t in total)} |")
    return "\n".join(rows)


def versions_table(versions):
    return "\n".join(f"- `{p}` {v}" for p, v in sorted(versions.items()))


HEADER = ("Generated by `tools/data/build_corpora.py` (do not edit by hand); "
          "see `docs/data.md` for how the splits are made and used.")


def write_books(out, splits, versions):
    readme = f"""# books: the six novels of Jane Austen

{HEADER}

Source: Debian package `r-cran-janeaustenr` (the R package janeaustenr by Julia Silge,
whose text comes from Project Gutenberg), read with `Rscript` from `r-base-core`.
Novels: {", ".join(f"{t} ({y})" for _, t, y in NOVELS)}.

Documents: one per chapter, starting at its heading line (`CHAPTER I`, `Chapter 1`, ...);
title pages, volume headings, `THE END` / `FINIS` lines and the modern editorial note
closing Northanger Abbey are left out. Ids: `books/<novel>/chNNN` (chapter number within
the novel). Each split is cut at chapter level.

Licence: the novels are in the public domain. The janeaustenr package is MIT-licensed;
its Debian copyright file is in `LICENSE`.

Package versions:
{versions_table(versions)}

{split_table(splits)}
"""
    lic = ("The text of Jane Austen's novels (1811-1817) is in the public domain.\n"
           "It was taken from the R package janeaustenr as packaged by Debian\n"
           "(r-cran-janeaustenr); the package's Debian copyright file follows.\n\n"
           + "=" * 72 + "\n/usr/share/doc/r-cran-janeaustenr/copyright\n" + "=" * 72 + "\n\n"
           + read("/usr/share/doc/r-cran-janeaustenr/copyright"))
    return readme, lic


def write_code(out, splits, versions):
    readme = f"""# code: modules of the CPython 3.11 standard library

{HEADER}

Source: Debian packages `libpython3.11-minimal` and `libpython3.11-stdlib`, the files
`{PY_LIB}/*.py` (top level only), in sorted order, of {CODE_MIN} to {CODE_MAX} bytes,
leaving out {", ".join(sorted(CODE_EXCLUDE))} (the Debian copyright file lists them under
licences other than the Python licence). One document per file, byte for byte; ids
`code/<file name>`.

Licence: Python Software Foundation License Version 2; the Debian copyright file, with
the full licence text and its history, is in `LICENSE`.

Package versions:
{versions_table(versions)}

{split_table(splits)}
"""
    lic = ("Modules of the CPython 3.11 standard library, as packaged by Debian\n"
           "(libpython3.11-stdlib, libpython3.11-minimal). Licence: Python Software\n"
           "Foundation License Version 2. The package's Debian copyright file follows.\n\n"
           + "=" * 72 + "\n/usr/share/doc/libpython3.11-stdlib/copyright\n" + "=" * 72 + "\n\n"
           + read("/usr/share/doc/libpython3.11-stdlib/copyright"))
    return readme, lic


def write_papers(out, splits, versions, vignettes):
    listing = "\n".join(f"- {p}: " + ", ".join(os.path.basename(v) for q, v in vignettes if q == p)
                        for p, _ in R_PACKAGES)
    readme = f"""# papers: Sweave/LaTeX vignettes of R packages

{HEADER}

Source: the `.Rnw` vignettes (LaTeX with embedded R code; several are journal papers)
that Debian's `r-cran-*` packages install under `<R library>/<package>/doc/`; files under
{VIGNETTE_MIN} bytes (stubs that only include a prebuilt PDF) are skipped.

{listing}

Documents: each vignette is cut before every `\\section` / `\\subsection` line; the
first piece is the preamble, title and abstract; pieces under {SECTION_MIN} bytes are
joined to the next one. A vignette's pieces, in order, concatenate to the file exactly.
Ids: `papers/<R package>/<vignette>/sNN`. Splits are cut at vignette level: all
sections of one vignette are in the same split.

Licence: GNU General Public License (version 2, or version 2 or later, as each package
states); the Debian copyright file of each package and the GPL-2 and GPL-3 texts are in
`LICENSE`.

Package versions:
{versions_table(versions)}

{split_table(splits)}
"""
    parts = ["Vignettes of R packages, as packaged by Debian. Each package's Debian\n"
             "copyright file follows, then the full texts of the GNU GPL versions 2 and 3.\n"]
    for p, deb in R_PACKAGES:
        path = f"/usr/share/doc/{deb}/copyright"
        parts.append("=" * 72 + f"\n{path}  (R package {p})\n" + "=" * 72 + "\n\n" + read(path))
    for path in LICENSE_FILES:
        parts.append("=" * 72 + f"\n{path}\n" + "=" * 72 + "\n\n" + read(path))
    return readme, "\n".join(parts)


def build(out):
    os.makedirs(out, exist_ok=True)
    summary = {}
    with tempfile.TemporaryDirectory(prefix="lethe-corpora-") as tmp:
        domains = {
            "books": (books_documents(tmp), BOOKS_PACKAGES),
            "code": (code_documents(), CODE_PACKAGES),
            "papers": (papers_documents(), PAPERS_PACKAGES),
        }
    vignettes = papers_vignettes()
    for domain, (docs, pkgs) in domains.items():
        ids = [i for _, i, _ in docs]
        assert len(set(ids)) == len(ids), f"duplicate ids in {domain}"
        splits = assign_splits(domain, docs)
        d = os.path.join(out, domain)
        os.makedirs(d, exist_ok=True)
        for s in SPLITS:
            write_jsonl(os.path.join(d, f"{s}.jsonl"), splits[s])
        versions = {p: installed_version(p) for p in pkgs}
        if domain == "books":
            readme, lic = write_books(d, splits, versions)
        elif domain == "code":
            readme, lic = write_code(d, splits, versions)
        else:
            readme, lic = write_papers(d, splits, versions, vignettes)
        with open(os.path.join(d, "README.md"), "w", encoding="utf-8", newline="\n") as f:
            f.write(readme)
        with open(os.path.join(d, "LICENSE"), "w", encoding="utf-8", newline="\n") as f:
            f.write(lic)
        summary[domain] = {s: (len(splits[s]), sum(len(t.encode("utf-8")) for _, t in splits[s]))
                           for s in SPLITS}
    for domain, per in summary.items():
        log(f"{domain}: " + ", ".join(f"{s} {n} docs {b} bytes" for s, (n, b) in per.items()))
    return summary


def compare(a, b):
    """Paths (relative) that differ between folders a and b."""
    diffs = []
    for root, _, names in os.walk(a):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), a)
            other = os.path.join(b, rel)
            if not os.path.isfile(other) or not filecmp.cmp(os.path.join(root, n), other, shallow=False):
                diffs.append(rel)
    for root, _, names in os.walk(b):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), b)
            if not os.path.exists(os.path.join(a, rel)):
                diffs.append(rel)
    return sorted(set(diffs))


def main():
    p = argparse.ArgumentParser(prog="tools/data/build_corpora.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: data/corpora)")
    p.add_argument("--check", action="store_true",
                   help="rebuild into a temporary folder and compare with --out; exit 1 on any difference")
    p.add_argument("--no-install", action="store_true", help="never run apt-get; list missing packages instead")
    args = p.parse_args()

    ensure_packages(BOOKS_PACKAGES + CODE_PACKAGES + PAPERS_PACKAGES, install=not args.no_install)
    if not args.check:
        build(args.out)
        log(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="lethe-corpora-check-") as tmp:
        build(tmp)
        diffs = compare(tmp, args.out)
    if diffs:
        log(f"{len(diffs)} files differ from {args.out}: {' '.join(diffs)}")
        log("(different Debian package versions change the text; each domain's README.md lists the versions used)")
        return 1
    log(f"{args.out} matches a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
