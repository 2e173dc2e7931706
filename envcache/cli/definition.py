"""CLI verbs over definitions: ``hash``, ``canonical``, ``diff``, ``convert``.

All are offline: they read files, never the daemon, so they work in CI before anything runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.cli.output import HelpFormatter, exit_status
from envcache.definition import FORMATS
from envcache.definition.model import VARIANTS

if TYPE_CHECKING:
    from envcache.definition import Definition


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the definition sub-commands to the ``envcache`` parser."""
    fmt = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    fmt.add_argument("--format", choices=FORMATS, help="input format (default: detected from the path)")

    p = sub.add_parser("hash", parents=[common, fmt], help="print the spec hash of definitions",
                       description="Print the spec hash of each definition: one line per path, the 32-hex hash "
                                   "and the path. Offline: reads files, never the daemon.",
                       epilog=exit_status(s0="hashed", s2="bad input (unreadable or invalid definition, bad argument)"))
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--variant", choices=VARIANTS, help="hash the definition as built for this variant")
    p.set_defaults(handler=_hash)

    p = sub.add_parser("canonical", parents=[common, fmt], help="print the canonical form of a definition",
                       description="Print the canonical form of a definition (indented JSON; --compact prints "
                                   "exactly the bytes that are hashed). Offline.",
                       epilog=exit_status(s0="printed", s2="bad input"))
    p.add_argument("path", metavar="PATH")
    p.add_argument("--variant", choices=VARIANTS, help="canonicalise the definition as built for this variant")
    p.add_argument("--compact", action="store_true", help="print exactly the bytes that are hashed")
    p.set_defaults(handler=_canonical)

    p = sub.add_parser("diff", parents=[common, fmt], help="explain why two definitions hash differently",
                       description="Compare two definitions: print 'same: HASH', or 'different:' with both hashes "
                                   "and the differences in plain words. Offline.",
                       epilog=exit_status(s0="same hash", s1="different hashes", s2="bad input"))
    p.add_argument("path_a", metavar="PATH_A")
    p.add_argument("path_b", metavar="PATH_B")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("convert", parents=[common, fmt], help="write a definition in another format",
                       description="Write a definition as envcache YAML or JSON, or as an Azure ML environment "
                                   "directory. Offline.",
                       epilog=exit_status(s0="written", s2="bad input (or a definition the format cannot hold)"))
    p.add_argument("path", metavar="PATH")
    p.add_argument("--to", required=True, choices=("azure-dir", "yaml", "json"), help="output format")
    p.add_argument("out", metavar="OUT", help="output file (yaml/json) or directory (azure-dir)")
    p.set_defaults(handler=_convert)


def _load(path: str, args: argparse.Namespace) -> Definition:
    """The definition at ``path``, as built for ``--variant`` when the verb has one and it is given."""
    from envcache.definition import for_variant, load_definition

    defn = load_definition(path, args.format)
    variant = getattr(args, "variant", None)
    return for_variant(defn, variant) if variant else defn


def _hash(args: argparse.Namespace) -> int:
    from envcache.cli.output import emit
    from envcache.definition import spec_hash

    rows = [{"path": path, "spec_hash": spec_hash(_load(path, args))} for path in args.paths]
    emit(args, "\n".join(f"{row['spec_hash']}  {row['path']}" for row in rows), rows)
    return 0


def _canonical(args: argparse.Namespace) -> int:
    from envcache.cli.output import emit
    from envcache.definition import canonical_bytes, canonical_form, spec_hash

    defn = _load(args.path, args)
    form = canonical_form(defn)
    text = canonical_bytes(defn).decode() if args.compact else json.dumps(form, indent=2, sort_keys=True, ensure_ascii=False)
    emit(args, text, {"path": args.path, "spec_hash": spec_hash(defn), "canonical": form})
    return 0


def _diff(args: argparse.Namespace) -> int:
    """Exit 0 when the definitions hash the same, 1 when they differ (as diff(1)); 2 on bad input."""
    from envcache.cli.output import emit
    from envcache.definition import canonical_form, spec_hash
    from envcache.definition.diff import explain

    a, b = _load(args.path_a, args), _load(args.path_b, args)
    hash_a, hash_b = spec_hash(a), spec_hash(b)
    changes = explain(canonical_form(a), canonical_form(b))
    same = hash_a == hash_b
    text = f"same: {hash_a}" if same else "\n".join(
        [f"different: {hash_a}  {args.path_a}", f"           {hash_b}  {args.path_b}"] + [f"  {c}" for c in changes])
    emit(args, text, {"same": same, "hash_a": hash_a, "hash_b": hash_b, "differences": changes})
    return 0 if same else 1


def _convert(args: argparse.Namespace) -> int:
    from envcache.cli.output import emit
    from envcache.definition import definition_to_dict, spec_hash, write_azure_dir
    from envcache.definition.files import atomic_write

    defn = _load(args.path, args)
    out = Path(args.out)
    if args.to == "azure-dir":
        write_azure_dir(defn, out)
    elif args.to == "json":
        atomic_write(out, json.dumps(definition_to_dict(defn), indent=2) + "\n")
    else:
        atomic_write(out, _yaml_dump(definition_to_dict(defn)))
    digest = spec_hash(defn)
    emit(args, f"{digest}  {out}", {"path": args.path, "out": str(out), "to": args.to, "spec_hash": digest})
    return 0


def _yaml_dump(data: dict[str, Any]) -> str:
    """YAML for people: field order kept, multi-line strings (a Dockerfile) as ``|`` blocks."""
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    def present_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    BlockDumper.add_representer(str, present_str)
    return yaml.dump(data, Dumper=BlockDumper, sort_keys=False, allow_unicode=True)
