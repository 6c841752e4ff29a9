"""The ``flows`` command line: run, list, describe, reset, produce, consume, config (and the
commands of ``runtimes/commands``: status, dlq, state, new).

Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

from flows.app import load_app, registered_apps
from flows.errors import ConfigError, FlowsError
from runtimes.commands import COMMANDS, registry_io
from runtimes.config import Settings
from runtimes.diagrams import describe
from runtimes.logs import setup_logging
from runtimes.process import limit_malloc_arenas, tune_gc

log = logging.getLogger("flows")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    kafka: dict[str, str] = {}
    for item in getattr(args, "kafka", None) or []:
        option, sep, value = item.partition("=")
        if not sep or not option:
            raise ConfigError(
                f"--kafka {item!r}: expected OPTION=VALUE, e.g. --kafka security.protocol=SASL_SSL"
            )
        kafka[option] = value
    return Settings.from_sources(
        config_file=getattr(args, "config", None),
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        database_url=getattr(args, "database_url", None),
        instance_id=getattr(args, "instance_id", None),
        batch_size=getattr(args, "batch_size", None),
        stateful_batch_size=getattr(args, "stateful_batch_size", None),
        log_format=getattr(args, "log_format", None),
        http_port=getattr(args, "http_port", None),
        http_host=getattr(args, "http_host", None),
        schema_registry_url=getattr(args, "schema_registry_url", None),
        kafka=kafka,
        **extra,
    )


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from runtimes.container import Container

    app = load_app(args.app)
    settings = _settings(args, until_idle=args.until_idle, processes=args.processes)
    setup_logging(settings.log_format, process=args.process_index)
    if settings.processes > 1:
        from runtimes.supervisor import supervise

        return supervise(args.argv, settings)
    limit_malloc_arenas(settings.malloc_arenas)
    steps = app.select(args.flow or ())
    log.info("running app %s: %s", app.name, ", ".join(s.name for s in steps))
    container = Container(settings=settings, app=app, flows=tuple(args.flow or ()))
    facade = container.facade()
    tune_gc(settings.gc_threshold)  # after the app and runtimes exist: they are frozen
    facade.run()
    log.info("app %s stopped", app.name)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    apps = registered_apps()
    if not apps:
        print("no registered apps", file=out)
    for name, target in apps.items():
        try:
            flows = ", ".join(load_app(name).flow_names)
        except FlowsError as error:
            flows = f"(cannot load: {error})"
        print(f"{name}\t{target}\t{flows}", file=out)
    return EXIT_OK


def cmd_describe(args: argparse.Namespace, out: TextIO) -> int:
    print(describe(load_app(args.app), args.format), file=out)
    return EXIT_OK


def cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    app = load_app(args.app)
    print(
        json.dumps(
            {"app": app.name, "flows": list(app.flow_names), "settings": _settings(args).masked()},
            indent=2,
        ),
        file=out,
    )
    return EXIT_OK


def cmd_reset(args: argparse.Namespace, out: TextIO) -> int:
    from runtimes.kafka import Admin
    from runtimes.postgres import PostgresStateStore

    app = load_app(args.app)
    if not args.yes:
        raise ConfigError(
            f"`flows reset {args.app}` deletes the app's topics, consumer groups "
            "and tables; add --yes to confirm"
        )
    settings = _settings(args)
    admin = Admin(settings.admin_config(), timeout=settings.startup_timeout)
    admin.check()
    groups = [step.group_id for step in app.steps]
    admin.delete_groups(groups)
    deleted = admin.delete_topics(list(app.topics))
    deadline = time.monotonic() + 60
    while True:  # a deleted topic lingers for a moment; retry until it can be recreated
        try:
            admin.ensure_topics(app.topics.values())
            break
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    tables = [
        *app.state_tables().values(),
        *app.history_tables().values(),
        *app.window_tables().values(),
        *app.materialised_tables().values(),
    ]
    if tables:
        store = PostgresStateStore(settings.database_url)
        try:
            store.drop_tables(tables)
            store.forget_groups(groups)
        finally:
            store.close()
    print(
        f"reset {app.name}: recreated {len(app.topics)} topics ({len(deleted)} deleted), "
        f"deleted groups {', '.join(groups)}, dropped tables {', '.join(tables) or 'none'}",
        file=out,
    )
    return EXIT_OK


def cmd_produce(args: argparse.Namespace, out: TextIO) -> int:
    from confluent_kafka import KafkaException, Producer

    from runtimes.commands.registry_io import value_encoder
    from runtimes.kafka import Admin

    settings = _settings(args)
    Admin(settings.admin_config(), timeout=settings.startup_timeout).check()
    encode = value_encoder(args, settings)
    producer = Producer(settings.producer_config())
    errors: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    source = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
    count = 0
    key = args.key.encode() if args.key is not None else None
    try:
        for number, line in enumerate(source, 1):
            value = line.rstrip(b"\r\n")
            if encode is not None and (value := encode(number, value)) is None:
                continue  # a blank line
            while True:
                try:
                    producer.produce(args.topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
                except KafkaException as error:
                    raise ConfigError(f"cannot produce to {args.topic!r}: {error}") from error
            count += 1
    finally:
        if args.file:
            source.close()
        if encode is not None:
            encode.close()
    remaining = producer.flush(60)
    if remaining or errors:
        print(f"{remaining} unacknowledged, {len(errors)} failed: {errors[:3]}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"produced {count} records to {args.topic}", file=out)
    return EXIT_OK


def cmd_consume(args: argparse.Namespace, out: TextIO) -> int:
    from confluent_kafka import Consumer

    from runtimes.commands.registry_io import value_shower
    from runtimes.kafka import Admin

    settings = _settings(args)
    admin = Admin(settings.admin_config(), timeout=settings.startup_timeout)
    admin.check()
    if args.topic not in admin.existing():
        raise ConfigError(f"topic {args.topic!r} does not exist")
    shower = value_shower(args, settings)
    show_value = shower or _show
    config = settings.consumer_config(f"flows-consume-{uuid.uuid4().hex[:8]}")
    config.update(
        {
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.partition.eof": False,
        }
    )
    consumer = Consumer(config)
    consumer.subscribe([args.topic])
    seen, last = 0, time.monotonic()
    try:
        while (args.max is None or seen < args.max) and time.monotonic() - last < args.timeout:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            last = time.monotonic()
            seen += 1
            key = _show(message.key())
            data = message.value()
            value = "null" if data is None else show_value(data)
            print(f"{message.partition()}\t{message.offset()}\t{key}\t{value}", file=out)
            headers: Any = message.headers() or []
            for name, header in headers:
                print(f"\t\t{name}: {_show(header)}", file=out)
    finally:
        consumer.close()
        if shower is not None:
            shower.close()
    return EXIT_OK


def _show(data: str | bytes | None) -> str:
    if data is None:
        return "null"
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()


# --- the parser --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="flows",
        description="Stream processing on Apache Kafka with exactly-once state in PostgreSQL.",
        epilog="An <app> is a registered name (see `flows list`), a path to a .py file, or "
        "module:attribute. Every option also reads FLOWS_<OPTION> from the environment "
        "(e.g. FLOWS_BOOTSTRAP_SERVERS, FLOWS_DATABASE_URL); librdkafka options pass through "
        "as FLOWS_KAFKA_<OPTION> or --kafka option=value.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def connection(sub: argparse.ArgumentParser, database: bool = True) -> None:
        sub.add_argument(
            "--bootstrap-servers",
            help="Kafka bootstrap servers (FLOWS_BOOTSTRAP_SERVERS, default localhost:9092)",
        )
        if database:
            sub.add_argument(
                "--database-url",
                help="PostgreSQL URL (FLOWS_DATABASE_URL, default "
                "postgresql://postgres:postgres@localhost:5432/flows)",
            )
        sub.add_argument(
            "--kafka",
            action="append",
            metavar="OPTION=VALUE",
            help="a librdkafka option, passed verbatim (repeatable)",
        )
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="a TOML file of settings (and a "
            "[kafka] table of librdkafka options); FLOWS_CONFIG also names one",
        )

    run = commands.add_parser("run", help="run an app's flows until stopped (SIGINT/SIGTERM)")
    run.add_argument("app")
    run.add_argument(
        "--flow",
        action="append",
        metavar="NAME",
        help="run only this flow (repeatable); default: every flow",
    )
    run.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit 0 once nothing new arrived for this long",
    )
    run.add_argument(
        "--instance-id",
        help="this process's name in transactional ids; "
        "replicas of one flow need distinct ones (default: the host name)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        help="records per batch of stateless and materialise flows (default 5000)",
    )
    run.add_argument(
        "--stateful-batch-size",
        type=int,
        help="records per batch of stateful flows and joins (default 10000)",
    )
    run.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N worker processes of the app under one supervisor, which forwards "
        "SIGINT/SIGTERM and stops all when one fails; process i has instance id "
        "<instance-id>.i and HTTP port <http-port>+i (FLOWS_PROCESSES, default 1)",
    )
    # set by the supervisor on its children: tags their log lines
    run.add_argument("--process-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--log-format", choices=("text", "json"))
    run.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="port of the HTTP server: health, readiness, metrics, state queries, "
        "ingest (FLOWS_HTTP_PORT, default 8080; 0: no server)",
    )
    run.add_argument(
        "--http-host",
        metavar="HOST",
        help="address the HTTP server binds (FLOWS_HTTP_HOST, default 0.0.0.0)",
    )
    connection(run)
    run.set_defaults(handler=cmd_run)

    lst = commands.add_parser("list", help="registered apps and their flows")
    lst.set_defaults(handler=cmd_list)

    desc = commands.add_parser("describe", help="an app's topics, flows and tables")
    desc.add_argument("app")
    desc.add_argument("--format", choices=("text", "mermaid"), default="text")
    desc.set_defaults(handler=cmd_describe)

    cfg = commands.add_parser("config", help="the effective settings, secrets masked")
    cfg.add_argument("app")
    connection(cfg)
    cfg.set_defaults(handler=cmd_config)

    reset = commands.add_parser(
        "reset",
        help="delete and recreate the app's topics, delete its consumer groups, drop its tables",
    )
    reset.add_argument("app")
    reset.add_argument("--yes", action="store_true", help="confirm")
    connection(reset)
    reset.set_defaults(handler=cmd_reset)

    produce = commands.add_parser("produce", help="produce lines (stdin or --file) to a topic")
    produce.add_argument("topic")
    produce.add_argument("--file", help="read lines from this file instead of stdin")
    produce.add_argument("--key", help="the key of every record (default: none)")
    registry_io.add_options(produce, produce=True)
    connection(produce, database=False)
    produce.set_defaults(handler=cmd_produce)

    consume = commands.add_parser("consume", help="print a topic's records (and headers)")
    consume.add_argument("topic")
    consume.add_argument("--from-beginning", action="store_true")
    consume.add_argument("--max", type=int, metavar="N", help="stop after N records")
    consume.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="stop after this many seconds without a record (default 5)",
    )
    registry_io.add_options(consume, produce=False)
    connection(consume, database=False)
    consume.set_defaults(handler=cmd_consume)
    for register in COMMANDS:
        register(commands, connection, _settings)
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv  # what a supervisor's children run again
    out = out or sys.stdout
    if args.command != "run":
        setup_logging("text", "WARNING")
    try:
        if args.command == "run":
            return int(args.handler(args))
        return int(args.handler(args, out))
    except ConfigError as error:
        print(f"flows: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except FlowsError as error:
        print(f"flows: failed: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
