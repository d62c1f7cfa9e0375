"""The ``kboxnet`` command line."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import select as select_mod
import signal
import sys
import threading
from collections.abc import Sequence

import attrs

from . import __version__
from .backend import BackendKind, CommandBackend, SessionContext
from .config import Config, ConfigError, load_config
from .exitcodes import ExitCode
from .forwarding import parse_publish, preflight
from .ranking import Ranked, SelectionError, rank, requested_names, select
from .registry import Registry, RegistryError

log = logging.getLogger("kboxnet")

#: how long ``kboxnet run`` waits for the guest's SLAAC address before starting the command
IPV6_WAIT = 3.0


def _setup_logging(verbose: int, quiet: int, default: int = logging.INFO) -> None:
    level = default - 10 * verbose + 10 * quiet
    level = max(logging.DEBUG, min(logging.CRITICAL, level))
    fmt = "kboxnet[%(process)d] %(levelname)s %(name)s: %(message)s" if level <= logging.DEBUG \
        else "kboxnet: %(levelname)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def _version_text(registry: Registry) -> str:
    lines = [f"kboxnet {__version__}"]
    for p in registry.plugins:
        names = sorted(e.name for e in registry.entries.values() if e.plugin is p and e.backend is not None)
        state = f"  [broken: {p.error}]" if p.error else ""
        lines.append(f"  plugin {p.name}: {p.distribution} {p.version}"
                     f"{' (backends: ' + ', '.join(names) + ')' if names else ''}{state}")
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> tuple[Registry, Config]:
    registry = Registry.discover()
    config = load_config(getattr(args, "config", None), registry.config_sections())
    net = config.net
    changes = {}
    if getattr(args, "mtu", None):
        changes["mtu"] = args.mtu
    if getattr(args, "pcap", None):
        changes["pcap"] = args.pcap
    if getattr(args, "no_fallback", False):
        changes["fallback"] = False
    published = tuple(parse_publish(p) for p in getattr(args, "publish", None) or ())
    if published:
        changes["forward"] = net.forward + published
    if changes:
        config = attrs.evolve(config, net=attrs.evolve(net, **changes))
    if args.subcommand in ("serve", "run"):
        preflight(config.net.forward)
    return registry, config


# -- backends ------------------------------------------------------------------
def cmd_backends(args: argparse.Namespace) -> int:
    registry, config = _load(args)
    ranked = rank(registry, config)
    rows = [r.as_dict() for r in ranked]
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    header = ["NAME", "AVAILABLE", "PRIORITY", "VERSION", "REASON"]
    if args.all:
        header += ["HINT", "DISTRIBUTION"]
    table = [header]
    for row in rows:
        line = [str(row["name"]), "yes" if row["available"] else "no", str(row["priority"]),
                str(row["version"] or "-"), str(row["reason"])]
        if args.all:
            line += [str(row["hint"] or "-"), f"{row['distribution']} {row['distribution_version']}"]
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not args.all:
        hints = [r for r in rows if not r["available"] and r["hint"]]
        for r in hints:
            print(f"hint for {r['name']}: {r['hint']}")
    return ExitCode.OK


# -- doctor --------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import core_checks

    registry, config = _load(args)
    checks = core_checks()
    for extra in registry.pm.hook.kboxnet_doctor_checks(config=config):
        checks.extend(extra or [])
    ranked = rank(registry, config)
    if args.json:
        print(json.dumps({"checks": [attrs.asdict(c) for c in checks],
                          "backends": [r.as_dict() for r in ranked]}, indent=2))
    else:
        for c in checks:
            print(f"[{'ok' if c.ok else 'FAIL' if c.required else 'warn'}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                print(f"       fix: {c.fix}")
        print("backends:")
        for r in ranked:
            a = r.availability
            print(f"  {r.name}: {'available' if a.available else 'unavailable'} - {a.reason}"
                  + (f" (hint: {a.hint})" if a.hint and not a.available else ""))
    failed_required = any(c.required and not c.ok for c in checks)
    return ExitCode.ENVIRONMENT if failed_required else ExitCode.OK


# -- serve ---------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .links.stream import StreamLink, StreamListener
    from .supervisor import Supervisor

    registry, config = _load(args)
    selection = select(registry, config, args.backend, BackendKind.FRAME, link_kind="stream")
    log.info("backends to try: %s (chosen by %s)", ", ".join(c.name for c in selection.candidates),
             selection.origin)
    sup = Supervisor(registry, config, list(selection.candidates))
    sup.install_signal_handlers()
    try:
        if args.fd is not None:
            link = StreamLink.from_fd(args.fd, mtu=config.net.mtu)
            _notify_ready(args.ready_fd)
            outcome = sup.serve_link(link)
            link.close()
            return ExitCode.OK if outcome.ok else ExitCode.BACKEND_FAILED
        listener = StreamListener(args.socket, mtu=config.net.mtu)
        log.info("listening on %s", args.socket)
        _notify_ready(args.ready_fd)
        status = ExitCode.OK
        try:
            while not sup.stopping:
                try:
                    readable, _, _ = select_mod.select([listener], [], [], 0.5)
                except InterruptedError:
                    continue
                if not readable:
                    continue
                link = listener.accept()
                log.info("guest connected on %s", args.socket)
                outcome = sup.serve_link(link)
                link.close()
                if not outcome.ok and not outcome.result.guest_gone and not sup.stopping:
                    log.error("no backend could serve the guest: %s", outcome.result.reason)
                    status = ExitCode.BACKEND_FAILED
                log.info("guest disconnected (%s)", outcome.result.reason)
                if args.once:
                    break
        finally:
            listener.close()
        return status
    finally:
        sup.cleanup()


def _notify_ready(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, b"READY=1\n")
        os.close(fd)
    except OSError as exc:
        log.warning("cannot write to --ready-fd %d: %s", fd, exc)


# -- run -----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .guestns import GuestNamespace, NamespaceRunner
    from .links.tap import TapLink
    from .supervisor import Supervisor

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("kboxnet run: missing command (usage: kboxnet run [--net NAME] -- CMD ...)")
    registry, config = _load(args)
    names, origin = requested_names(config, args.net)
    command_backend = None
    if names:
        entry = registry.get(names[0])
        if entry is not None and entry.backend is not None and entry.backend.kind is BackendKind.COMMAND:
            ranked = {r.name: r for r in rank(registry, config)}
            r = ranked[names[0]]
            if not r.availability.available:
                raise SelectionError(f"backend {names[0]!r} (from {origin}) is unavailable: "
                                     f"{r.availability.reason}" + (f" (hint: {r.availability.hint})"
                                                                   if r.availability.hint else ""))
            command_backend = entry.backend
    frame_choice = None
    if command_backend is not None:
        frame_choice = getattr(command_backend.section(config), "frame_backend", None)
    elif args.net:
        frame_choice = args.net
    selection = select(registry, config, frame_choice if frame_choice != "auto" else None,
                       BackendKind.FRAME, link_kind="tap")
    candidates = list(selection.candidates)
    vnet = config.net.tap_offload and any(c.backend is not None and c.backend.accepts_vnet_hdr
                                          for c in candidates)
    log.info("guest namespace served by %s (chosen by %s)%s",
             ", then ".join(c.name for c in candidates), selection.origin,
             f", sockets switched by {command_backend.name}" if command_backend else "")
    gns = GuestNamespace.create(config, vnet_hdr=vnet)
    link = TapLink(gns.tap_fd, gns.ifname, mtu=config.net.mtu, vnet_hdr=vnet, offload=vnet)
    sup = Supervisor(registry, config, candidates)
    ready = threading.Event()
    outcome_box: list[object] = []

    def serve() -> None:
        try:
            outcome_box.append(sup.serve_link(link, gns.target, on_ready=lambda s: ready.set()))
        finally:
            ready.set()

    thread = threading.Thread(target=serve, name="kboxnet-supervisor", daemon=True)
    runner = None
    child = None
    try:
        thread.start()
        ready.wait(60)
        if outcome_box:  # the supervisor gave up before any session was ready
            outcome = outcome_box[0]
            log.error("no backend could serve the namespace: %s", outcome.result.reason)  # type: ignore[attr-defined]
            return ExitCode.BACKEND_FAILED
        serving = sup.current_session()
        entry = registry.get(serving.backend_name) if serving is not None else None
        serves_ipv6 = entry is not None and entry.backend is not None and entry.backend.serves_ipv6
        if config.net.ipv6.enabled and serves_ipv6 and not gns.wait_for_ipv6(IPV6_WAIT):
            log.info("no IPv6 address on %s after %.0f s (the backend sends no router advertisement?); "
                     "starting the command anyway", gns.ifname, IPV6_WAIT)
        ctx = SessionContext(config, sup.runtime_dir, gns.target)
        runner = command_backend.runner(ctx) if isinstance(command_backend, CommandBackend) else NamespaceRunner()
        child = runner.spawn(argv, gns.target, os.environ)

        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(child, signum)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGHUP, forward)
        signal.signal(signal.SIGINT, lambda *_: None)  # the terminal sends it to the command too
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        child = None
        return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + (status & 0x7F)
    finally:
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        sup.request_stop()
        thread.join(10)
        if runner is not None:
            counters = dict(runner.counters())
            if counters:
                log.info("%s counters: %s", command_backend.name if command_backend else "runner",
                         " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v))
            runner.close()
        link.close()
        gns.close()
        sup.cleanup()


# -- bench ---------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as exc:
        log.error("the benchmark harness is not available: %s", exc)
        return ExitCode.FAILURE
    return int(bench_main(list(args.bench_args)))


# -- parser --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kboxnet", description="User-mode networking backends for "
                                     "sandboxes and virtual machines.")
    parser.add_argument("--version", action="store_true", help="print versions of kboxnet and its plugins")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeatable)")
    common.add_argument("-q", "--quiet", action="count", default=0, help="less logging (repeatable)")
    common.add_argument("--config", metavar="FILE", help="TOML config file (default: $KBOXNET_CONFIG, "
                        "./kboxnet.toml, $XDG_CONFIG_HOME/kboxnet/kboxnet.toml)")
    sub = parser.add_subparsers(dest="subcommand")

    p = sub.add_parser("backends", parents=[common], help="list backends, their availability and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also show hints and distributions")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("doctor", parents=[common], help="check this machine for what backends need")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("serve", parents=[common], help="serve a VM or kbox over the qemu stream protocol")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="listen on this UNIX socket path")
    where.add_argument("--fd", type=int, metavar="N", help="use this inherited, connected stream socket")
    p.add_argument("--backend", metavar="NAME", help="backend to use (default: auto)")
    p.add_argument("--mtu", type=int, help="guest MTU (overrides net.mtu)")
    p.add_argument("--pcap", metavar="FILE", help="capture guest frames to FILE (backends that support it)")
    p.add_argument("--once", action="store_true", help="exit after the first guest disconnects")
    p.add_argument("--no-fallback", action="store_true", help="do not replace a failed backend")
    p.add_argument("--ready-fd", type=int, metavar="N", help="write READY=1 to fd N once listening")
    p.add_argument("-p", "--publish", action="append", metavar="[[ADDR:]HOSTPORT:]GUESTPORT[/udp]",
                   help="forward a host port to the guest (repeatable; host address defaults to 127.0.0.1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", parents=[common], help="run a command in a new network namespace")
    p.add_argument("--net", metavar="NAME", help="backend: auto, passt, minislirp, host-bypass, ...")
    p.add_argument("--mtu", type=int, help="guest MTU (overrides net.mtu)")
    p.add_argument("--pcap", metavar="FILE", help="capture guest frames to FILE")
    p.add_argument("--no-fallback", action="store_true", help="do not replace a failed backend")
    p.add_argument("-p", "--publish", action="append", metavar="[[ADDR:]HOSTPORT:]GUESTPORT[/udp]",
                   help="forward a host port to the guest (repeatable; host address defaults to 127.0.0.1)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="benchmark backends against references (see kboxnet bench --help)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack on stderr
    if argv[:1] == ["bench"]:  # argparse's REMAINDER drops options that come first: pass them as they are
        _setup_logging(0, 0)
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        _setup_logging(0, 1, logging.WARNING)
        print(_version_text(Registry.discover()))
        return ExitCode.OK
    if args.subcommand is None:
        parser.print_help()
        return ExitCode.USAGE
    default = logging.WARNING if args.subcommand in ("run", "backends", "doctor") else logging.INFO
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0), default)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"kboxnet: config error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except SelectionError as exc:
        print(f"kboxnet: {exc}", file=sys.stderr)
        return ExitCode.NO_BACKEND
    except RegistryError as exc:
        print(f"kboxnet: plugin error: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except OSError as exc:
        print(f"kboxnet: {exc}", file=sys.stderr)
        return ExitCode.FAILURE


def _ranked_names(ranked: list[Ranked]) -> list[str]:
    return [r.name for r in ranked]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
