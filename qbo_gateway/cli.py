"""The `qbo-gateway` command line: the only place that exits the process.

Each subcommand loads settings (failing with a message naming the bad setting), wires what
it needs through `app`, and returns an exit code. Subcommands import their modules lazily
so `keygen` and the `check` probe start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from qbo_gateway import __version__
from qbo_gateway.logs import configure_logging
from qbo_gateway.settings import Settings, SettingsError, load_settings


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"qbo-gateway: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(_args: argparse.Namespace) -> int:
    from qbo_gateway.commands.serve import serve

    settings = _settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


def cmd_demo(args: argparse.Namespace) -> int:
    from qbo_gateway.commands.demo import run_demo

    return asyncio.run(run_demo(simulator_port=args.simulator_port))


def cmd_simulator(args: argparse.Namespace) -> int:
    from qbo_gateway.simulator import run

    run(
        args.host,
        args.port,
        realm_id=args.realm,
        print_tokens=args.print_tokens,
        env_file=args.env_file,
        url=args.url,
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    # Read directly (not via Settings): the probe must answer even when other settings are
    # broken, and it only needs where the ops listener is.
    port = args.port or int(os.environ.get("QBO_OPS_PORT", "9090"))
    host = os.environ.get("QBO_OPS_HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    print("ready" if ok else "not ready")
    return 0 if ok else 1


def cmd_check_config(_args: argparse.Namespace) -> int:
    from qbo_gateway.commands.check_config import check_config

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"qbo-gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    problems, notes = check_config(settings)
    for note in notes:
        print(f"ok: {note}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_keygen(_args: argparse.Namespace) -> int:
    from qbo_gateway.tokens.crypto import generate_key

    print(generate_key())
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    import qbo_gateway.commands.tokens as token_cli

    settings = _settings_or_exit()
    configure_logging("warning", settings.log_format)
    if args.tokens_command == "import":
        return asyncio.run(
            token_cli.tokens_import(
                settings,
                realm_id=args.realm,
                refresh_token=args.refresh_token,
                access_token=args.access_token,
                access_expires_at=args.access_expires_at,
                force=args.force,
            )
        )
    if args.tokens_command == "list":
        return asyncio.run(
            token_cli.tokens_list(settings, as_json=args.json, limit=args.limit, after=args.after)
        )
    if args.tokens_command == "revoke":
        return asyncio.run(token_cli.tokens_revoke(settings, realm_id=args.realm))
    if args.tokens_command == "remove":
        return asyncio.run(token_cli.tokens_remove(settings, realm_id=args.realm))
    if args.tokens_command == "link":
        from qbo_gateway.commands.realm_link import tokens_link

        return asyncio.run(
            tokens_link(
                settings, realm_id=args.realm, return_to=args.return_to, ops_url=args.ops_url
            )
        )
    return 2


def cmd_connect(args: argparse.Namespace) -> int:
    from qbo_gateway.commands.connect import connect

    settings = _settings_or_exit()
    configure_logging("warning", settings.log_format)
    return asyncio.run(connect(settings, port=args.port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qbo-gateway",
        description="A sidecar reverse proxy for QuickBooks Online (settings: QBO_* variables).",
    )
    parser.add_argument("--version", action="version", version=f"qbo-gateway {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the daemon (default)").set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the simulator plus the gateway, with a demo realm")
    demo.add_argument("--simulator-port", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulator", help="the QBO simulator alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8079)
    sim.add_argument("--realm", default=None, help="seed this realm id")
    sim.add_argument("--print-tokens", action="store_true", help="print the seeded tokens")
    sim.add_argument(
        "--env-file", default=None, help="write the settings a serve needs here (0600)"
    )
    sim.add_argument(
        "--url", default=None, help="the URL gateways reach it at (default http://HOST:PORT)"
    )
    sim.set_defaults(func=cmd_simulator)

    check = sub.add_parser("check", help="exit 0 when the local gateway is ready")
    check.add_argument("--port", type=int, default=None, help="ops port (QBO_OPS_PORT)")
    check.add_argument("--timeout", type=float, default=2.0)
    check.set_defaults(func=cmd_check)

    sub.add_parser("check-config", help="validate settings and files").set_defaults(
        func=cmd_check_config
    )
    sub.add_parser("keygen", help="print a new key for QBO_TOKEN_KEYS").set_defaults(
        func=cmd_keygen
    )

    tokens = sub.add_parser("tokens", help="manage stored realm tokens")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    imp = tsub.add_parser("import", help="store a realm's tokens")
    imp.add_argument("--realm", required=True)
    imp.add_argument("--refresh-token", required=True)
    imp.add_argument("--access-token", default=None)
    imp.add_argument("--access-expires-at", default=None, help="ISO 8601 or epoch seconds")
    imp.add_argument("--force", action="store_true", help="overwrite a stored realm")
    lst = tsub.add_parser("list", help="realms with expiry times (never a token)")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--limit", type=int, default=100, help="realms per page")
    lst.add_argument("--after", default=None, help="start after this realm id (next page)")
    rev = tsub.add_parser("revoke", help="revoke at Intuit and remove the realm")
    rev.add_argument("--realm", required=True)
    rem = tsub.add_parser("remove", help="forget the realm here (no call to Intuit)")
    rem.add_argument("--realm", required=True)
    link = tsub.add_parser("link", help="a connect link from the running gateway (admin token)")
    link.add_argument("--realm", default=None, help="reconnect this realm (default: a new one)")
    link.add_argument("--return-to", default=None, help="a URL on QBO_CONNECT_RETURN_URLS")
    link.add_argument("--ops-url", default=None, help="default: the local ops listener")
    tokens.set_defaults(func=cmd_tokens)

    connect = sub.add_parser("connect", help="connect a new realm (OAuth authorization code)")
    connect.add_argument("--port", type=int, default=8765, help="local callback port")
    connect.set_defaults(func=cmd_connect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve"])
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
