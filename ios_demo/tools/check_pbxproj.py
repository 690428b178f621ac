"""Structural checks of ios_demo/MDExportDemo.xcodeproj/project.pbxproj (no Xcode needed).

    python3 ios_demo/tools/check_pbxproj.py [path/to/project.pbxproj]

Parses the old-style (OpenStep) property list Xcode writes and checks that:
- it parses completely (balanced braces and parentheses, every entry ends with ';'), no duplicate keys;
- every object has an `isa`, and every section the app needs is present;
- object IDs are 24 uppercase hex digits, and every ID referenced anywhere is defined;
- every file reference under "<group>" resolves (through its groups) to a file or folder that exists;
- the local package reference points at a folder with a Package.swift that declares the product used;
- every Swift file in App/ is compiled by the app target, and the "model" folder is a resource.
Exits non-zero with one line per problem.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ID = re.compile(r"^[0-9A-F]{24}$")
REQUIRED_SECTIONS = [
    "PBXBuildFile", "PBXFileReference", "PBXGroup", "PBXNativeTarget", "PBXProject", "PBXResourcesBuildPhase",
    "PBXSourcesBuildPhase", "PBXFrameworksBuildPhase", "XCBuildConfiguration", "XCConfigurationList",
    "XCSwiftPackageProductDependency", "XCLocalSwiftPackageReference",
]


class ParseError(Exception):
    pass


def tokenize(text: str):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ParseError(f"unterminated comment at offset {i}")
            i = j + 2
        elif c in "{}()=;,":
            yield c, i
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    buf.append(text[j:j + 2])
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            if j >= n:
                raise ParseError(f"unterminated string at offset {i}")
            yield ("str", "".join(buf)), i
            i = j + 1
        else:
            m = re.compile(r"[A-Za-z0-9_$+/:.\-<>]+").match(text, i)
            if not m:
                raise ParseError(f"unexpected character {c!r} at offset {i}")
            yield ("str", m.group(0)), i
            i = m.end()


class Parser:
    def __init__(self, text: str):
        self.tokens = list(tokenize(text))
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, expected=None):
        if self.pos >= len(self.tokens):
            raise ParseError("unexpected end of file")
        tok, off = self.tokens[self.pos]
        if expected is not None and tok != expected:
            raise ParseError(f"expected {expected!r} at offset {off}, got {tok!r}")
        self.pos += 1
        return tok

    def value(self):
        tok = self.peek()
        if tok == "{":
            self.take("{")
            d = {}
            while self.peek() != "}":
                key = self.take()
                if not isinstance(key, tuple):
                    raise ParseError(f"expected a key, got {key!r}")
                self.take("=")
                if key[1] in d:
                    raise ParseError(f"duplicate key {key[1]}")
                d[key[1]] = self.value()
                self.take(";")
            self.take("}")
            return d
        if tok == "(":
            self.take("(")
            items = []
            while self.peek() != ")":
                items.append(self.value())
                if self.peek() == ",":
                    self.take(",")
                elif self.peek() != ")":
                    raise ParseError("expected ',' or ')' in a list")
            self.take(")")
            return items
        t = self.take()
        if not isinstance(t, tuple):
            raise ParseError(f"unexpected {t!r}")
        return t[1]


def walk_strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)
    else:
        yield value


def check(path: Path) -> list[str]:
    problems: list[str] = []
    text = path.read_text(encoding="utf-8")
    if not text.startswith("// !$*UTF8*$!"):
        problems.append("missing the '// !$*UTF8*$!' header")
    try:
        parser = Parser(text)
        root = parser.value()
        if parser.pos != len(parser.tokens):
            problems.append("trailing tokens after the root dictionary")
    except ParseError as e:
        return problems + [f"parse error: {e}"]

    objects = root.get("objects", {})
    project_dir = path.parent.parent  # the folder holding MDExportDemo.xcodeproj
    for key in ("archiveVersion", "objectVersion", "rootObject"):
        if key not in root:
            problems.append(f"root has no {key}")
    for oid, obj in objects.items():
        if not ID.match(oid):
            problems.append(f"object id {oid} is not 24 uppercase hex digits")
        if not isinstance(obj, dict) or "isa" not in obj:
            problems.append(f"object {oid} has no isa")
    isas = {obj.get("isa") for obj in objects.values() if isinstance(obj, dict)}
    for section in REQUIRED_SECTIONS:
        if section not in isas:
            problems.append(f"no {section} object")
        elif f"/* Begin {section} section */" not in text:
            problems.append(f"no '/* Begin {section} section */' marker")

    for s in walk_strings(root):
        if isinstance(s, str) and ID.match(s) and s not in objects:
            problems.append(f"id {s} is referenced but not defined")
    root_obj = objects.get(root.get("rootObject"), {})
    if root_obj.get("isa") != "PBXProject":
        problems.append("rootObject is not a PBXProject")

    # Resolve group paths: parent map from group children.
    parent = {}
    for oid, obj in objects.items():
        if obj.get("isa") in ("PBXGroup", "PBXVariantGroup"):
            for child in obj.get("children", []):
                if child in parent:
                    problems.append(f"{child} is in two groups")
                parent[child] = oid

    def resolve(oid):
        parts = []
        cur = oid
        while cur is not None:
            obj = objects[cur]
            tree = obj.get("sourceTree", "<group>")
            if obj.get("path"):
                parts.append(obj["path"])
            if tree == "SOURCE_ROOT":
                break
            if tree != "<group>":
                return None
            cur = parent.get(cur)
        return project_dir.joinpath(*reversed(parts))

    main_group = root_obj.get("mainGroup")
    for oid, obj in objects.items():
        if obj.get("isa") != "PBXFileReference" or obj.get("sourceTree") == "BUILT_PRODUCTS_DIR":
            continue
        if oid not in parent:
            problems.append(f"file reference {obj.get('path')} is in no group")
            continue
        p = resolve(oid)
        if p is not None and not p.exists():
            problems.append(f"file reference {obj.get('path')} -> {p} does not exist")
    if main_group not in objects:
        problems.append("mainGroup is not defined")

    # Build files point at file references or package products.
    for oid, obj in objects.items():
        if obj.get("isa") == "PBXBuildFile":
            ref = obj.get("fileRef") or obj.get("productRef")
            if ref not in objects:
                problems.append(f"build file {oid} points at nothing")

    # Local package and its product.
    products = []
    for obj in objects.values():
        if obj.get("isa") == "XCLocalSwiftPackageReference":
            pkg = project_dir / obj.get("relativePath", "")
            manifest = pkg / "Package.swift"
            if not manifest.exists():
                problems.append(f"local package {obj.get('relativePath')} has no Package.swift ({manifest})")
            else:
                products += re.findall(r'\.library\(\s*name:\s*"([^"]+)"', manifest.read_text())
    for obj in objects.values():
        if obj.get("isa") == "XCSwiftPackageProductDependency" and obj.get("productName") not in products:
            problems.append(f"package product {obj.get('productName')} is not declared by any local Package.swift")

    # Target content.
    targets = [o for o in objects.values() if o.get("isa") == "PBXNativeTarget"]
    if len(targets) != 1:
        problems.append(f"expected one native target, found {len(targets)}")
    for t in targets:
        phases = [objects[p] for p in t.get("buildPhases", []) if p in objects]
        compiled = set()
        resources = set()
        for ph in phases:
            for bf in ph.get("files", []):
                ref = objects.get(objects.get(bf, {}).get("fileRef"), {})
                if ph.get("isa") == "PBXSourcesBuildPhase":
                    compiled.add(ref.get("path"))
                elif ph.get("isa") == "PBXResourcesBuildPhase":
                    resources.add(ref.get("path"))
        for swift in sorted((project_dir / "App").glob("*.swift")):
            if swift.name not in compiled:
                problems.append(f"App/{swift.name} is not in the target's Sources phase")
        if "model" not in resources:
            problems.append("the 'model' folder reference is not a resource of the target")
        for lst in (t.get("buildConfigurationList"),):
            if objects.get(lst, {}).get("isa") != "XCConfigurationList":
                problems.append("target has no XCConfigurationList")
        if not t.get("packageProductDependencies"):
            problems.append("target has no packageProductDependencies")
    return problems


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "MDExportDemo.xcodeproj" / "project.pbxproj"
    problems = check(path)
    for p in problems:
        print(p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
