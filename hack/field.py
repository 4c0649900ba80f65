#!/usr/bin/env python3
"""Usage: hack/field.py FILE KEY...

Prints the value at KEY... of a YAML (.yaml, .yml) or TOML (.toml) file: each KEY descends
one level, into a mapping by name or a list by index; a string that is itself YAML (a
Chart.yaml annotation such as artifacthub.io/images) is parsed when a KEY goes on into
it. A scalar prints as it is, anything else as JSON. Exits 1, naming the path, when it is
not there; 2 on a usage error.

The scripts under hack/ read the chart's and Cargo's fields through it: a parser, not a
sed pattern that a reordered, quoted or commented line defeats.
"""

import json
import sys


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".toml"):
        import tomllib

        return tomllib.loads(data.decode("utf-8"))
    import yaml

    return yaml.safe_load(data)


def main(argv):
    if len(argv) < 3:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    path, keys = argv[1], argv[2:]
    node = load(path)
    for depth, key in enumerate(keys):
        if isinstance(node, str):
            import yaml

            node = yaml.safe_load(node)
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            where = " ".join(keys[: depth + 1])
            print(f"{path}: no {where}", file=sys.stderr)
            return 1
    print(node if isinstance(node, str) else json.dumps(node))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
