"""`fleet keys create|list|revoke|usage` and `fleet usage`, on the tenants' database (the
running server may have it open: SQLite's WAL lets both work at once).

    fleet keys create --name app1 --budget-usd 10 --rpm 60 --tpm 100000 \\
                      --models 'gemma-3-270m*,router/*' --expires 30d --config fleet.toml
    fleet keys list | revoke app1 | usage app1 --since 7d
    fleet usage --by key|model --since 1d

The database is `[tenants] database` of `--config` (default ./fleet.toml), or `--database`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_tenants_parsers(subparsers) -> None:
    k = subparsers.add_parser("keys", help="API keys with budgets and rate limits (the [tenants] database)")
    sub = k.add_subparsers(dest="keys_command", required=True)
    c = sub.add_parser("create", help="create a key; its secret is printed once")
    c.add_argument("--name", required=True)
    c.add_argument("--budget-usd", type=float, help="spend limit in USD (default: none)")
    c.add_argument("--rpm", type=int, help="requests per minute (default: none)")
    c.add_argument("--tpm", type=int, help="prompt + completion tokens per minute (default: none)")
    c.add_argument("--models", help="allowed model ids, comma-separated glob patterns (default: all)")
    c.add_argument("--expires", help="lifetime, e.g. 30d, 12h (default: never)")
    c.set_defaults(func=cmd_create)
    lst = sub.add_parser("list", help="list keys (never their secrets)")
    lst.set_defaults(func=cmd_list)
    r = sub.add_parser("revoke", help="revoke a key (by id or name); a running server stops it within seconds")
    r.add_argument("key")
    r.set_defaults(func=cmd_revoke)
    u = sub.add_parser("usage", help="one key's usage by model")
    u.add_argument("key")
    u.add_argument("--since", help="e.g. 1d, 12h (default: all time)")
    u.set_defaults(func=cmd_key_usage)
    usage = subparsers.add_parser("usage", help="usage and cost from the ledger, by key or by model")
    usage.add_argument("--by", choices=["key", "model"], default="key")
    usage.add_argument("--since", help="e.g. 1d, 12h (default: all time)")
    usage.set_defaults(func=cmd_usage)
    for p in (c, lst, r, u, usage):
        p.add_argument("--config", default="fleet.toml", help="fleet.toml with a [tenants] table (default %(default)s)")
        p.add_argument("--database", help="the tenants' SQLite file or postgresql:// URL (instead of --config)")


def _database(args):
    from fleetlm.tenants.db import Database

    if args.database:
        return Database(args.database)
    if not Path(args.config).is_file():
        raise SystemExit(f"error: {args.config} not found; pass --config FILE (with [tenants]) or --database FILE")
    from fleetlm.fleet_toml import load_fleet_toml

    tenants = load_fleet_toml(args.config).tenants
    if tenants is None:
        raise SystemExit(f"error: {args.config} has no [tenants] table; add one (see docs/tenants.md)")
    return Database(tenants.database)


def cmd_create(args) -> int:
    from fleetlm.tenants.keys import create_key, parse_duration, parse_models

    try:
        limits = dict(budget_usd=args.budget_usd, rpm=args.rpm, tpm=args.tpm, models=parse_models(args.models),
                      expires_in_s=parse_duration(args.expires) if args.expires else None)
        db = _database(args)
        key, secret = db.call(lambda conn: create_key(conn, args.name, **limits))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db.close()
    print(f"created {key.id} ({key.name}); its secret, shown only now:\n{secret}")
    return 0


def cmd_list(args) -> int:
    from fleetlm.tenants.keys import list_keys

    db = _database(args)
    keys = db.call(list_keys)
    db.close()
    rows = [[k.id, k.name, k.prefix + "…", k.state(), _money(k.budget_usd), _money(k.spent_usd), k.rpm or "-",
             k.tpm or "-", ",".join(k.models), _date(k.expires)] for k in keys]
    _table(["id", "name", "secret", "state", "budget", "spent", "rpm", "tpm", "models", "expires"], rows)
    return 0


def cmd_revoke(args) -> int:
    from fleetlm.tenants.keys import revoke_key

    db, key = _key(args)
    key = db.call(revoke_key, key.id)
    db.close()
    print(f"revoked {key.id} ({key.name})")
    return 0


def cmd_key_usage(args) -> int:
    db, key = _key(args)
    return _usage(db, by="model", since=args.since, key_id=key.id,
                  title=f"{key.name} ({key.id}): spent {_money(key.spent_usd)} of {_money(key.budget_usd)}")


def _key(args):
    """The database and the key `args.key` names (an id, or a name only one key has)."""
    from fleetlm.tenants.keys import find_key

    db = _database(args)
    key = db.call(find_key, args.key)
    if key is None:
        db.close()
        raise SystemExit(f"error: no key {args.key!r} (an id, or a name only one key has)")
    return db, key


def cmd_usage(args) -> int:
    return _usage(_database(args), by=args.by, since=args.since)


def _usage(db, *, by: str, since: str | None, key_id: str | None = None, title: str | None = None) -> int:
    from fleetlm.tenants.keys import parse_duration
    from fleetlm.tenants.ledger import usage

    try:
        since_s = parse_duration(since) if since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = db.call(lambda conn: usage(conn, by=by, since_s=since_s, key_id=key_id))
    db.close()
    if title:
        print(title)
    _table([by, "requests", "errors", "prompt tok", "completion tok", "cached tok", "cost"],
           [[r["name"], r["requests"], r["errors"], r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"],
             _money(r["cost_usd"])] for r in rows])
    return 0


def _table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if not rows:
        print("(none)")


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.6f}"


def _date(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
