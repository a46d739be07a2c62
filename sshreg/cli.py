"""sshreg: a container registry you reach through SSH."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import logs
from .config import ConfigError, load_config

log = logging.getLogger("sshreg")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sshreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the SSH server and the registry")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="HOST:PORT of the SSH server (default 0.0.0.0:2222)")
    serve.add_argument("--keys", help="folder with authorized_keys and the host key (default keys/)")
    serve.add_argument("--storage", help="a folder, or s3://BUCKET[/PREFIX] (default data/)")
    serve.add_argument("--log-format", choices=["text", "json", "logfmt"])
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def _load(args: argparse.Namespace):
    return load_config(
        args.config,
        listen=args.listen,
        keys=args.keys,
        storage=args.storage,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"sshreg: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(config.log_level, config.log_format)
    if args.command == "serve":
        from .service import serve

        try:
            asyncio.run(serve(config))
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
