"""sshreg: a container registry you reach through SSH."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from . import logs, tunnel
from .config import Config, load_config
from .memory import tune_malloc
from .settings import EXIT_CONFIG, ConfigError, run_main

log = logging.getLogger("sshreg")

EXIT_FAILED = 1


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--listen", help="HOST:PORT of the SSH server (default 0.0.0.0:2222)")
    parser.add_argument("--keys", help="folder with authorized_keys and the host key (default keys/)")
    parser.add_argument("--storage", help="a folder, or s3://BUCKET[/PREFIX] (default data/)")
    parser.add_argument("--log-format", choices=list(logs.FORMATTERS))
    parser.add_argument("--log-level", choices=logs.LEVELS)


def _keys_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", help="folder with authorized_keys (default: the config's, else keys/)")
    parser.add_argument("--config", type=Path, help="TOML configuration file naming the keys folder")


def _keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="list, add and remove the SSH keys that may log in")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    add = actions.add_parser("add", help="authorize a key (full access unless restricted)")
    add.add_argument("key", metavar="FILE_OR_LINE", nargs="?",
                     help="a .pub file, an authorized_keys line, or - to read stdin")
    add.add_argument("--ca", metavar="CA_PUB", help="a CA's public key (file, line or -): its "
                     "user certificates for --principals log in")
    add.add_argument("--principals", metavar="NAMES",
                     help="with --ca: the certificate principals it accepts, comma-separated")
    add.add_argument("--pull-only", action="store_true",
                     help="may only pull (from --repos, else from every repository)")
    add.add_argument("--repos", action="append", metavar="GLOB",
                     help="limit pull, push and delete to these repositories (repeatable)")
    add.add_argument("--comment", metavar="NAME", help="the name shown in logs (default: the key's)")
    add.add_argument("--replace", action="store_true", help="replace the line if the key is there")
    _keys_flags(add)

    listing = actions.add_parser("list", help="show every key with its rights, and ignored lines")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _keys_flags(listing)

    remove = actions.add_parser("remove", help="remove a key by fingerprint or comment")
    remove.add_argument("selector", metavar="FINGERPRINT_OR_COMMENT")
    _keys_flags(remove)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sshreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the SSH server and the registry")
    _config_flags(serve)
    serve.add_argument("--workers", help="processes serving SSH connections (default: the "
                       "config's, else auto: one per CPU)")
    serve.add_argument("--mirror", action="append", metavar="PREFIX=URL",
                       help="pull PREFIX/NAME through from the registry at URL; repeatable")
    check = sub.add_parser("check-config",
                           help="check the configuration, the keys folder and the storage")
    _config_flags(check)
    _keys_parser(sub)
    gc = sub.add_parser("gc", help="collect garbage in the storage (safe while the server runs)")
    _config_flags(gc)
    gc.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    gc.add_argument("--json", action="store_true", help="machine-readable report")
    tunnel.add_parser(sub)
    return parser


def _load(args: argparse.Namespace):
    return load_config(
        args.config,
        listen=args.listen,
        keys=args.keys,
        storage=args.storage,
        log_format=args.log_format,
        log_level=args.log_level,
        workers=getattr(args, "workers", None),
        mirrors=getattr(args, "mirror", None),
    )


def _check(config: Config) -> int:
    """`check-config`: a summary on stdout, warnings and errors on stderr."""
    from .checks import format_report, run_checks

    report = run_checks(config)
    out, err = format_report(report)
    for line in err:
        print(line, file=sys.stderr)
    print("\n".join(out))
    return 0 if report.ok else EXIT_FAILED


def _gc(config: Config, dry_run: bool, as_json: bool) -> int:
    """`sshreg gc` on the host: the collector the `gc` SSH command runs, in its own process."""
    from .events.log import EventLog, gateway_name
    from .inspection import human_size
    from .management.collection import Collection
    from .storage.factory import open_driver
    from .store.registry_store import RegistryStore

    async def collect():
        driver = open_driver(config.storage, config.limits)
        try:
            events = EventLog(driver, gateway_name(), config.events.poll)
            return await Collection(RegistryStore(driver), config.gc, config.mirrors, events,
                                    config.events.keep).run(dry_run)
        finally:
            await driver.close()

    try:
        report = asyncio.run(collect())
    except Exception as exc:
        log.error("garbage collection failed: %(error)s", {"error": str(exc)})
        return EXIT_FAILED
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        verb = "would remove" if dry_run else "removed"
        print(f"{verb} {len(report.tags)} tag(s), {len(report.manifests)} manifest(s), "
              f"{report.blobs} blob(s), {report.orphans} leftover object(s): "
              f"{human_size(report.bytes_reclaimed)} in {report.seconds:.1f}s")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .keys.edits import Grant, new_line, read_key_source, with_key, without_key
    from .keys.lines import KeyAdminError, comment_of, fingerprint_of
    from .keys.listing import listing_json, listing_text
    from .storage.base import StorageError

    try:
        config = load_config(args.config, keys=args.keys)
    except ConfigError as exc:
        print(f"sshreg: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.keys_command == "list":
            lines = _keys_edit(config, args, None)
            print(json.dumps(listing_json(lines), indent=2) if args.json
                  else "\n".join(listing_text(lines)))
        elif args.keys_command == "add":
            grant = Grant.parse(args.repos, args.pull_only)
            if (args.key is None) == (args.ca is None):
                raise KeyAdminError("give a key, or --ca with a CA's public key")
            if (args.ca is None) != (args.principals is None):
                raise KeyAdminError("--ca and --principals go together")
            principals = tuple(p.strip() for p in (args.principals or "").split(",") if p.strip())
            if args.ca is not None and not principals:
                raise KeyAdminError("--principals names no principal")
            text, entry = new_line(read_key_source(args.key or args.ca), grant, args.comment,
                                   principals)
            added = _keys_edit(config, args, lambda lines, where: with_key(
                lines, text, entry, args.replace, where))
            verb = "replaced" if added.replaced else "added"
            what = (f"CA for principals {','.join(added.entry.principals)} "
                    if added.entry.cert_authority else "")
            print(f"{verb} {what}{added.entry.fingerprint} {added.entry.comment or '-'} on line "
                  f"{added.line}: {added.entry.rights.describe()}")
        else:
            gone = _keys_edit(config, args, lambda lines, where: without_key(
                lines, args.selector, where))
            for line in gone:
                print(f"removed line {line.number}: {fingerprint_of(line)} "
                      f"{comment_of(line) or '-'}")
    except (KeyAdminError, OSError, StorageError) as exc:
        print(f"sshreg keys {args.keys_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _keys_edit(config: Config, args: argparse.Namespace, change):
    """Read authorized_keys (`change` None: its lines) or apply `change` (lines, where ->
    new text, result) to it, wherever the config puts it: a file (edited under a lock) or
    an object in a bucket (a conditional write, redone if another edit came first)."""
    if config.server.shared_keys:
        from .keys.bucket_file import edit_shared, open_bucket_file, read_shared

        async def shared():
            source = open_bucket_file(config.server.authorized_keys,
                                      endpoint_url=config.storage.endpoint_url or None,
                                      region=config.storage.region)
            try:
                if change is None:
                    return await read_shared(source)
                return await edit_shared(source, lambda lines: change(lines, source))
            finally:
                await source.close()

        return asyncio.run(shared())
    from .keys.local_file import edit_file, keys_file, read_lines

    path = keys_file(Path(config.server.authorized_keys_location),
                     must_exist=args.keys_command == "remove")
    if change is None:
        return read_lines(path)
    return edit_file(path, lambda lines: change(lines, path))


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before any thread exists: glibc fixes its arena limit at the first one
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    if args.command == "tunnel":
        return tunnel.main(args)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"sshreg: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check(config)
    logs.configure(config.log.level, config.log.format)
    if args.command == "gc":
        return _gc(config, args.dry_run, args.json)
    if args.command == "serve":
        if config.server.workers > 1:  # the supervisor never loads what serves requests
            from .workers.supervisor import supervise

            return run_main(supervise(config), log)
        from .service import serve

        return run_main(serve(config), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
