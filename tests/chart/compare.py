#!/usr/bin/env python3
"""Usage: tests/chart/compare.py manifests RENDER MANIFEST...
       tests/chart/compare.py crd RENDER CRD
       tests/chart/compare.py value RENDER KIND[/NAME] PATH JSON
       tests/chart/compare.py labelled RENDER LABEL VALUE

Semantic comparisons between the chart's default render (`helm template crane-operator
charts/crane-operator --namespace crane-system`) and the plain manifests, for
tests/chart/test.sh. Objects are parsed, not compared as text: key order, quoting and
comments do not matter.

manifests: every object of the MANIFEST files, except the Namespace (the chart leaves it to
  `helm install --create-namespace`) and the CRD (see `crd`), equals the object of the same
  kind/namespace/name in RENDER, apart from the labels only Helm sets (helm.sh/chart,
  app.kubernetes.io/managed-by); and RENDER has no object that the manifests lack, apart
  from the CRD and `helm test` hooks.
crd: the CRD in RENDER equals CRD apart from the labels the chart adds and the
  annotation helm.sh/resource-policy, which must be "keep".
value: RENDER holds exactly one object of KIND (named NAME, when given), and its value at
  PATH (keys joined by dots, list items as [N], [-1] the last, a key with dots as ["key"])
  equals JSON, e.g.
  `value render.yaml Deployment 'spec.template.spec.containers[0].args[-1]' '"--x"'`;
  JSON `null` also accepts a PATH that is not there.
labelled: every object of RENDER, and every pod template in it, carries LABEL=VALUE, and
  no selector (spec.selector, its matchLabels, spec.podSelector) selects by LABEL.

Prints what differs, path by path; exits 1 when anything does, 2 on a usage error.
YAML is read with PyYAML when it is installed, else converted to JSON by kubectl.
"""

import json
import re
import subprocess
import sys

HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}
HOOK = "helm.sh/hook"


def load(path):
    """The objects (dicts) of a multi-document YAML file, in order; empty documents dropped."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        # The C loader when PyYAML has it: the render holds the CRD, slow to parse in Python.
        docs = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    else:
        # No PyYAML: kubectl converts the YAML client-side (--dry-run=client), but it asks
        # the API server for the REST mapping of each kind, so this needs the cluster that
        # tests/chart/test.sh uses anyway.
        out = subprocess.run(
            ["kubectl", "create", "--dry-run=client", "--validate=false", "-o", "json", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"kubectl cannot convert {path} to JSON: {out.stderr.strip()}")
        # One JSON object per document, one after the other (or a List).
        docs, text, pos, decoder = [], out.stdout, 0, json.JSONDecoder()
        while text[pos:].strip():
            obj, end = decoder.raw_decode(text[pos:].lstrip())
            pos = len(text) - len(text[pos:].lstrip()) + end
            docs += obj["items"] if obj.get("kind") == "List" else [obj]
    return [d for d in docs if d]


def key(obj):
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion"), obj.get("kind"), meta.get("namespace", ""), meta.get("name"))


def show(k):
    api, kind, ns, name = k
    return f"{kind} {ns + '/' if ns else ''}{name} ({api})"


def drop_labels(obj, names):
    """Removes the named labels from metadata.labels (an empty map goes too)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels")
    if isinstance(labels, dict):
        for n in names:
            labels.pop(n, None)
        if not labels:
            del meta["labels"]


def strip_helm(obj):
    """The object without the labels only Helm sets, also on a pod template."""
    drop_labels(obj, HELM_ONLY_LABELS)
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, dict):
        drop_labels(template, HELM_ONLY_LABELS)
    return obj


def same_scalar(a, b):
    """Equal scalars. Numbers compare by value: JSON has one number type, and the API server
    reads a schema's `maximum: 86400.0` and `maximum: 86400` alike (Helm's toYaml writes
    the float 86400.0 of files/crd.yaml as 86400)."""
    number = (int, float)
    if isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b


def diff(a, b, path="", out=None, names=("manifest", "chart")):
    """Paths where a (the manifest, or what is expected) and b (the render) differ."""
    out = [] if out is None else out
    an, bn = names
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(f"{p}: only in the {an}: {json.dumps(a[k])[:200]}")
            elif k not in a:
                out.append(f"{p}: only in the {bn}: {json.dumps(b[k])[:200]}")
            else:
                diff(a[k], b[k], p, out, names)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items in the {an}, {len(b)} in the {bn}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out, names)
    elif not same_scalar(a, b):
        out.append(f"{path}: {an} {json.dumps(a)}, {bn} {json.dumps(b)}")
    return out


def compare_manifests(render_path, manifest_paths):
    problems = []
    rendered = {}
    for obj in load(render_path):
        if HOOK in (obj.get("metadata", {}).get("annotations") or {}):
            continue  # helm test pods
        if obj.get("kind") == "CustomResourceDefinition":
            continue  # compared by `crd`
        rendered[key(obj)] = strip_helm(obj)
    seen = set()
    for path in manifest_paths:
        for obj in load(path):
            kind = obj.get("kind")
            if kind in ("Namespace", "CustomResourceDefinition"):
                continue
            k = key(obj)
            if k in seen:
                problems.append(f"{show(k)}: twice in the manifests")
            seen.add(k)
            if k not in rendered:
                problems.append(f"{show(k)} ({path}): the chart does not render it")
                continue
            for d in diff(strip_helm(obj), rendered[k]):
                problems.append(f"{show(k)} ({path}): {d}")
    for k in sorted(set(rendered) - seen, key=str):
        problems.append(f"{show(k)}: rendered by the chart, missing from the manifests")
    return problems, f"{len(seen)} objects equal"


def compare_crd(render_path, crd_path):
    crds = [o for o in load(render_path) if o.get("kind") == "CustomResourceDefinition"]
    want = load(crd_path)
    if len(crds) != 1 or len(want) != 1:
        return [f"expected one CRD in each, found {len(crds)} rendered and {len(want)} in {crd_path}"], ""
    have, want = crds[0], want[0]
    problems = []
    meta = have.get("metadata", {})
    annotations = meta.get("annotations") or {}
    if annotations.get("helm.sh/resource-policy") != "keep":
        problems.append(
            f"metadata.annotations[helm.sh/resource-policy] is {annotations.get('helm.sh/resource-policy')!r}, expected 'keep'"
        )
    annotations.pop("helm.sh/resource-policy", None)
    if not annotations:
        meta.pop("annotations", None)
    labels = meta.get("labels") or {}
    want_labels = (want.get("metadata") or {}).get("labels") or {}
    added = {k: v for k, v in labels.items() if k not in want_labels}
    if not added.get("app.kubernetes.io/managed-by"):
        problems.append("metadata.labels has no app.kubernetes.io/managed-by: the chart adds no labels?")
    drop_labels(have, added)
    problems += diff(want, have)
    return problems, f"equal apart from {len(added)} labels and the keep annotation"


def compare_labelled(render_path, label, value):
    problems, objs = [], load(render_path)

    def carries(meta, what):
        labels = (meta or {}).get("labels") or {}
        if labels.get(label) != value:
            problems.append(f"{what}: no label {label}={value} (labels {json.dumps(labels)[:120]})")

    for obj in objs:
        where, spec = show(key(obj)), obj.get("spec") or {}
        carries(obj.get("metadata"), where)
        if isinstance(spec.get("template"), dict):
            carries(spec["template"].get("metadata"), f"{where} pod template")
        for name in ("selector", "podSelector"):
            selector = spec.get(name)
            if isinstance(selector, dict) and label in {**selector, **(selector.get("matchLabels") or {})}:
                problems.append(f"{where}: spec.{name} selects by {label}")
    return problems, f"{len(objs)} objects carry {label}={value}, no selector uses it"


def compare_value(render_path, kind, path, want_json):
    kind, _, name = kind.partition("/")
    objs = [
        o for o in load(render_path) if o.get("kind") == kind and (not name or (o.get("metadata") or {}).get("name") == name)
    ]
    kind = f"{kind}/{name}" if name else kind
    if len(objs) != 1:
        return [f"expected one {kind} in the render, found {len(objs)}"], ""
    have, want = objs[0], json.loads(want_json)
    for step in re.findall(r'[^.\[\]"]+|\[-?[0-9]+\]|\["[^"]*"\]', path):
        try:
            if step.startswith('["'):
                have = have[step[2:-2]]
            else:
                have = have[int(step[1:-1])] if step.startswith("[") else have[step]
        except (KeyError, IndexError, TypeError):
            if want is None:
                return [], f"{kind} has no {path}"
            return [f"{kind} has no {path} (missing at {step})"], ""
    return diff(want, have, f"{kind} {path}", names=("expected", "chart")), f"{kind} {path} = {json.dumps(have)[:60]}"


def main(argv):
    if len(argv) >= 3 and argv[0] == "manifests":
        problems, summary = compare_manifests(argv[1], argv[2:])
    elif len(argv) == 3 and argv[0] == "crd":
        problems, summary = compare_crd(argv[1], argv[2])
    elif len(argv) == 5 and argv[0] == "value":
        problems, summary = compare_value(*argv[1:])
    elif len(argv) == 4 and argv[0] == "labelled":
        problems, summary = compare_labelled(*argv[1:])
    else:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    if not problems:
        print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
